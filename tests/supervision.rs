//! Supervision: a process whose serving task dies stops reporting ready, drains and exits
//! non-zero, instead of claiming to serve. The task is killed the way it dies in the
//! field: its listening socket is shut down under it (in process, found among our own
//! descriptors; in a child process, taken with `pidfd_getfd`, which needs the right to
//! trace it: root, as CI runs).

mod common;

use std::net::SocketAddr;
use std::os::fd::RawFd;
use std::process::Stdio;
use std::time::Duration;

use tailgate::worker::Worker;
use tailgate_testkit::Sink;

/// The address `fd` is bound to, if it is a listening TCP socket.
fn listening_addr(fd: RawFd) -> Option<SocketAddr> {
    let mut accepting: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: plain getsockopt/getsockname on a descriptor number, with correctly sized
    // out-parameters; an fd that is not a socket just fails.
    unsafe {
        if libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_ACCEPTCONN,
            (&mut accepting as *mut libc::c_int).cast(),
            &mut len,
        ) != 0
            || accepting == 0
        {
            return None;
        }
        let mut addr: libc::sockaddr_in = std::mem::zeroed();
        let mut len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
        if libc::getsockname(fd, (&mut addr as *mut libc::sockaddr_in).cast(), &mut len) != 0
            || i32::from(addr.sin_family) != libc::AF_INET
        {
            return None;
        }
        let ip = std::net::Ipv4Addr::from(u32::from_be(addr.sin_addr.s_addr));
        Some(SocketAddr::from((ip, u16::from_be(addr.sin_port))))
    }
}

/// Shuts the listening socket bound to `addr` down (in this process).
fn break_listener(addr: SocketAddr) {
    for entry in std::fs::read_dir("/proc/self/fd").unwrap() {
        let fd: RawFd = entry
            .unwrap()
            .file_name()
            .to_string_lossy()
            .parse()
            .unwrap();
        if listening_addr(fd) == Some(addr) {
            // SAFETY: shutdown on a socket we found bound to `addr`; the owner sees EINVAL.
            assert_eq!(unsafe { libc::shutdown(fd, libc::SHUT_RDWR) }, 0);
            return;
        }
    }
    panic!("no listening socket on {addr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_whose_receiver_dies_goes_not_ready() {
    let sink = Sink::start(vec![]).await;
    let mut worker = Worker::start(common::config(
        &sink,
        "  policies: [{name: all, type: always_sample}]\n",
    ))
    .await
    .unwrap();
    let ready = |addr: SocketAddr| async move {
        reqwest::get(format!("http://{addr}/readyz"))
            .await
            .unwrap()
            .status()
            .as_u16()
    };
    assert_eq!(ready(worker.admin_addr).await, 200);
    break_listener(worker.grpc_addr.unwrap());
    let failure = tokio::time::timeout(Duration::from_secs(10), worker.failed())
        .await
        .expect("the dead receiver was not noticed");
    assert_eq!(
        (failure.group, failure.task),
        ("receivers", "otlp grpc receiver")
    );
    assert!(failure.to_string().contains("listener"), "{failure}");
    assert_eq!(ready(worker.admin_addr).await, 503);
    worker.shutdown().await;
}

#[test]
fn a_worker_process_whose_receiver_dies_exits_non_zero() {
    let dir = tempfile::tempdir().unwrap();
    let grpc = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let path = dir.path().join("worker.yaml");
    std::fs::write(
        &path,
        format!(
            r#"
receivers: {{otlp: {{protocols: {{grpc: {{endpoint: "{grpc}"}}}}}}}}
tail_sampling: {{policies: [{{name: all, type: always_sample}}]}}
exporters: {{debug: {{}}}}
admin: {{endpoint: "127.0.0.1:0"}}
"#
        ),
    )
    .unwrap();
    let child = std::process::Command::new(env!("CARGO_BIN_EXE_tailgate"))
        .args(["worker", "--config"])
        .arg(&path)
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while std::net::TcpStream::connect(grpc).is_err() {
        assert!(
            std::time::Instant::now() < deadline,
            "the worker did not listen"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    // SAFETY: pidfd_open and pidfd_getfd on our own child; the duplicated descriptors are
    // ours to use and close.
    unsafe {
        let pidfd = libc::syscall(libc::SYS_pidfd_open, child.id() as libc::c_int, 0) as RawFd;
        assert!(
            pidfd >= 0,
            "pidfd_open: {}",
            std::io::Error::last_os_error()
        );
        let mut broken = false;
        for target in 0..256 {
            let fd = libc::syscall(libc::SYS_pidfd_getfd, pidfd, target, 0) as RawFd;
            if fd < 0 {
                continue;
            }
            if listening_addr(fd) == Some(grpc) {
                assert_eq!(libc::shutdown(fd, libc::SHUT_RDWR), 0);
                broken = true;
            }
            libc::close(fd);
        }
        libc::close(pidfd);
        assert!(broken, "no listening socket on {grpc} in the child");
    }
    let output = wait_with_timeout(child, Duration::from_secs(30));
    let log = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "exited with success:\n{log}");
    assert!(log.contains("a task failed; draining and exiting"), "{log}");
    assert!(log.contains("otlp grpc receiver"), "{log}");
    assert!(log.contains("worker stopped"), "did not drain:\n{log}");
}

fn wait_with_timeout(mut child: std::process::Child, limit: Duration) -> std::process::Output {
    let deadline = std::time::Instant::now() + limit;
    while child.try_wait().unwrap().is_none() {
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            panic!("the worker did not exit after its receiver died");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    child.wait_with_output().unwrap()
}
