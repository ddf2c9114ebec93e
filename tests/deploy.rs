//! The files in deploy/ parse, and the Prometheus rules have the shape Prometheus loads.

use std::path::Path;

fn yaml_files(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            yaml_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "yaml" || e == "yml") {
            out.push(path);
        }
    }
}

#[test]
fn every_yaml_file_in_deploy_parses() {
    let mut files = Vec::new();
    yaml_files(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy"),
        &mut files,
    );
    assert!(!files.is_empty());
    for f in files {
        let text = std::fs::read_to_string(&f).unwrap();
        serde_yaml::from_str::<serde_yaml::Value>(&text)
            .unwrap_or_else(|e| panic!("{}: {e}", f.display()));
    }
}

#[test]
fn recording_rules_sum_across_workers() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/prometheus/recording-rules.yaml");
    let rules: serde_yaml::Value =
        serde_yaml::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let mut records = 0;
    for group in rules["groups"].as_sequence().unwrap() {
        assert!(group["name"].as_str().is_some());
        for rule in group["rules"].as_sequence().unwrap() {
            let expr = rule["expr"].as_str().unwrap();
            assert!(rule["record"].as_str().is_some() || rule["alert"].as_str().is_some());
            if rule["record"]
                .as_str()
                .is_some_and(|r| r.ends_with(":rate5m") && !r.contains("error_ratio"))
            {
                assert!(
                    expr.contains("sum without (collector_instance_id, instance, pod)"),
                    "{expr}"
                );
            }
            records += 1;
        }
    }
    assert!(records >= 6);
}
