//! The one owner of a process instance's long-lived tasks (receivers, decision loops, the
//! memory limiter, watchers, resolvers, probes, the admin listener). Tasks live in named
//! groups that are stopped in the order the owner chooses (receivers before decision loops,
//! the admin listener last), each group with its own stop token.
//!
//! A task that ends before its group was told to stop has failed, whether it returned an
//! error, returned at all, or panicked: [`Supervisor::failed`] reports the first such end,
//! and the owner stops reporting ready, drains what it can and exits non-zero, so an
//! orchestrator restarts the process instead of leaving one that claims to serve.

use std::error::Error;
use std::future::Future;

use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

/// What a supervised task may fail with.
pub type TaskError = Box<dyn Error + Send + Sync>;

/// A long-lived task that ended while it should have been running.
#[derive(Debug, thiserror::Error)]
#[error("{group} task {task:?} {}", match .cause {
    Some(e) => format!("failed: {e}"),
    None => "ended unexpectedly".to_owned(),
})]
pub struct TaskFailure {
    pub group: &'static str,
    pub task: &'static str,
    /// The task's error, or its panic; `None` when it returned without one.
    #[source]
    pub cause: Option<TaskError>,
}

/// A spawned task aborted when its handle is dropped: dropping a supervisor (a start-up
/// that failed part way) ends every task it started.
struct AbortOnDrop<T>(tokio::task::JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// A group of tasks stopped together.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Group(usize);

struct GroupState {
    name: &'static str,
    stop: CancellationToken,
    tasks: JoinSet<()>,
}

/// Owns the long-lived tasks of one process instance.
pub struct Supervisor {
    groups: Vec<GroupState>,
    failures: mpsc::UnboundedReceiver<TaskFailure>,
    report: mpsc::UnboundedSender<TaskFailure>,
}

impl Default for Supervisor {
    fn default() -> Self {
        Self::new()
    }
}

impl Supervisor {
    pub fn new() -> Self {
        let (report, failures) = mpsc::unbounded_channel();
        Self {
            groups: Vec::new(),
            failures,
            report,
        }
    }

    /// A new group of tasks, stopped by [`Supervisor::stop`].
    pub fn group(&mut self, name: &'static str) -> Group {
        self.groups.push(GroupState {
            name,
            stop: CancellationToken::new(),
            tasks: JoinSet::new(),
        });
        Group(self.groups.len() - 1)
    }

    /// The token `group`'s tasks stop on.
    pub fn token(&self, group: Group) -> CancellationToken {
        self.groups[group.0].stop.clone()
    }

    /// Runs `task` in `group`. It is expected to run until the group's token is cancelled;
    /// ending earlier, with or without an error, or panicking, is reported as a failure.
    pub fn spawn<E>(
        &mut self,
        group: Group,
        task: &'static str,
        future: impl Future<Output = Result<(), E>> + Send + 'static,
    ) where
        E: Into<TaskError> + Send + 'static,
    {
        let state = &mut self.groups[group.0];
        let (name, stop, report) = (state.name, state.stop.clone(), self.report.clone());
        let mut inner = AbortOnDrop(tokio::spawn(future));
        state.tasks.spawn(async move {
            let cause = match (&mut inner.0).await {
                Ok(Ok(())) => None,
                Ok(Err(e)) => Some(e.into()),
                Err(join) => Some(Box::new(join) as TaskError),
            };
            if stop.is_cancelled() {
                if let Some(e) = cause {
                    tracing::warn!(group = name, task, error = %e, "task failed while stopping");
                }
                return;
            }
            let _ = report.send(TaskFailure {
                group: name,
                task,
                cause,
            });
        });
    }

    /// The first task that ended while it should have been running. Pending while all run.
    pub async fn failed(&mut self) -> TaskFailure {
        match self.failures.recv().await {
            Some(failure) => failure,
            // `self` holds a sender, so the channel never closes.
            None => std::future::pending().await,
        }
    }

    /// Stops `group`: cancels its token and waits for its tasks to end.
    pub async fn stop(&mut self, group: Group) {
        let state = &mut self.groups[group.0];
        state.stop.cancel();
        while state.tasks.join_next().await.is_some() {}
    }

    /// Stops every group not stopped yet, in the order they were created.
    pub async fn stop_all(&mut self) {
        for i in 0..self.groups.len() {
            self.stop(Group(i)).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_task_that_ends_early_is_reported_with_its_cause() {
        let mut supervisor = Supervisor::new();
        let serving = supervisor.group("serving");
        let stop = supervisor.token(serving);
        supervisor.spawn(serving, "steady", async move {
            stop.cancelled().await;
            Ok::<_, std::io::Error>(())
        });
        supervisor.spawn(serving, "listener", async {
            tokio::time::sleep(Duration::from_secs(5)).await;
            Err(std::io::Error::other("listener closed"))
        });
        let failure = supervisor.failed().await;
        assert_eq!((failure.group, failure.task), ("serving", "listener"));
        assert_eq!(
            failure.to_string(),
            "serving task \"listener\" failed: listener closed"
        );
        supervisor.stop_all().await;
    }

    #[tokio::test(start_paused = true)]
    async fn returning_or_panicking_counts_and_stopping_does_not() {
        let mut supervisor = Supervisor::new();
        let group = supervisor.group("work");
        supervisor.spawn(group, "returns", async { Ok::<_, std::io::Error>(()) });
        let failure = supervisor.failed().await;
        assert!(failure.cause.is_none());
        assert!(failure.to_string().ends_with("ended unexpectedly"));

        supervisor.spawn(group, "panics", async {
            if true {
                panic!("boom");
            }
            Ok::<_, std::io::Error>(())
        });
        let failure = supervisor.failed().await;
        assert_eq!(failure.task, "panics");
        assert!(failure.cause.is_some());

        // Tasks that end because they were stopped are not failures.
        let stop = supervisor.token(group);
        supervisor.spawn(group, "stops", async move {
            stop.cancelled().await;
            Ok::<_, std::io::Error>(())
        });
        supervisor.stop(group).await;
        let quiet = tokio::time::timeout(Duration::from_secs(60), supervisor.failed()).await;
        assert!(quiet.is_err(), "a stopped task was reported as failed");
    }
}
