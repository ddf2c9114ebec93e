//! The `file_storage` extension's keys (the collector's `directory`, `fsync` and
//! `create_directory`), and how a component's `storage:` key names an extension.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::Deserialize;

use crate::config::Errors;

/// `extensions.file_storage` (or `file_storage/<name>`).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileStorageConfig {
    pub directory: PathBuf,
    /// Also fsync every record: survive a machine's crash, not only the process's.
    #[serde(default)]
    pub fsync: bool,
    /// Create `directory` when it does not exist (otherwise that is an error at start).
    #[serde(default)]
    pub create_directory: bool,
}

/// Whether an extension's name is a `file_storage` one.
pub fn is_file_storage(name: &str) -> bool {
    name == "file_storage" || name.starts_with("file_storage/")
}

/// The `file_storage` extension `name` (a `storage:` value found at `path`) from the
/// file's `extensions`.
pub fn storage_extension(
    extensions: &BTreeMap<String, serde_yaml::Value>,
    name: &str,
    path: &str,
    errors: &mut Errors,
) -> Option<FileStorageConfig> {
    if !is_file_storage(name) {
        errors.push(
            path,
            format!(
                "{name:?} is not a file_storage extension (file_storage or file_storage/<name>)"
            ),
        );
        return None;
    }
    let Some(value) = extensions.get(name) else {
        errors.push(
            path,
            format!("extension {name:?} is not configured under extensions"),
        );
        return None;
    };
    let config: FileStorageConfig = errors.parse(&format!("extensions.{name}"), value.clone())?;
    if config.directory.as_os_str().is_empty() {
        errors.push(format!("extensions.{name}.directory"), "must not be empty");
        return None;
    }
    Some(config)
}
