//! What every component's config shares: reading YAML with `${VAR}` expanded after parsing
//! ([`read_yaml`]), and the diagnostics ([`Errors`], [`ConfigError`]) that collect every
//! problem with its dotted path and report them together, with the bounds settings are
//! checked against. Each component owns its own section: its serde shape, its defaults
//! and its validation (`receiver::config`, `exporter::config`, `worker::config`,
//! `policy`, `spanmetrics`, `memory_limiter`, `router::config`, `telemetry`,
//! `lifecycle`); this module imports none of them. A config pasted in the collector's
//! shape is rewritten into those sections first ([`collector`]).

pub mod collector;
mod env;

use std::fmt;
use std::time::Duration;

use serde::de::DeserializeOwned;

/// One problem in a config, with the dotted path of the key it concerns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    pub path: String,
    pub message: String,
}

/// Every problem found in a config.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ConfigError {
    pub errors: Vec<FieldError>,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.errors.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            if e.path.is_empty() {
                write!(f, "{}", e.message)?;
            } else {
                write!(f, "{}: {}", e.path, e.message)?;
            }
        }
        Ok(())
    }
}

/// A top-level section of a config file that a component owns: its key, its defaults and
/// its checks.
pub trait Section: DeserializeOwned + Default {
    const KEY: &'static str;
    fn validate(&self, errors: &mut Errors);
}

/// Collects errors while a config is checked.
#[derive(Debug, Default)]
pub struct Errors(Vec<FieldError>);

impl Errors {
    pub fn push(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.0.push(FieldError {
            path: path.into(),
            message: message.into(),
        });
    }

    /// Records an error unless `min <= value <= max`: the bounds on settings that size
    /// memory, threads or time.
    pub fn within<T: PartialOrd + fmt::Display>(
        &mut self,
        path: impl Into<String>,
        value: T,
        min: T,
        max: T,
    ) {
        if value < min || value > max {
            self.push(path, format!("{value} is not between {min} and {max}"));
        }
    }

    /// [`Errors::within`] for durations, shown as in the config (`1s`, `24h`).
    pub fn within_duration(
        &mut self,
        path: impl Into<String>,
        value: Duration,
        min: Duration,
        max: Duration,
    ) {
        if value < min || value > max {
            let show = |d: Duration| humantime::format_duration(d).to_string();
            self.push(
                path,
                format!(
                    "{} is not between {} and {}",
                    show(value),
                    show(min),
                    show(max)
                ),
            );
        }
    }

    /// Deserializes `value` as `T`, recording a failure under `path`.
    pub fn parse<T: DeserializeOwned>(
        &mut self,
        path: &str,
        value: serde_yaml::Value,
    ) -> Option<T> {
        match serde_path_to_error::deserialize(value) {
            Ok(v) => Some(v),
            Err(e) => {
                let inner = e.path().to_string();
                let full = match (path.is_empty(), inner.as_str()) {
                    (_, ".") => path.to_owned(),
                    (true, _) => inner,
                    (false, _) if inner.starts_with('[') => format!("{path}{inner}"),
                    (false, _) => format!("{path}.{inner}"),
                };
                self.push(full, e.into_inner().to_string());
                None
            }
        }
    }

    /// A [`Section`] of the file: parsed (its default when missing or null), then checked.
    pub fn section<T: Section>(&mut self, value: Option<serde_yaml::Value>) -> Option<T> {
        let section: T = self.parse_section(T::KEY, value)?;
        section.validate(self);
        Some(section)
    }

    /// Like [`Errors::parse`], treating a missing or null section as its default.
    pub fn parse_section<T: DeserializeOwned + Default>(
        &mut self,
        path: &str,
        value: Option<serde_yaml::Value>,
    ) -> Option<T> {
        match value {
            None | Some(serde_yaml::Value::Null) => Some(T::default()),
            Some(v) => self.parse(path, v),
        }
    }

    /// The validated `value`, or everything recorded. A section that failed to parse is
    /// `None` and always recorded its error; should one be `None` without an error, that is
    /// reported too rather than trusted.
    pub fn finish<T>(self, value: Option<T>) -> Result<T, ConfigError> {
        self.check()?;
        value.ok_or_else(|| ConfigError {
            errors: vec![FieldError {
                path: String::new(),
                message: "a section could not be read".into(),
            }],
        })
    }

    /// `Err` with everything recorded, if anything was.
    pub fn check(self) -> Result<(), ConfigError> {
        if self.0.is_empty() {
            Ok(())
        } else {
            Err(ConfigError { errors: self.0 })
        }
    }
}

/// Parses YAML into a value, then expands `${VAR}` in its scalar values from the process
/// environment (see [`env`]): a variable's value is never read as YAML.
pub fn read_yaml(text: &str) -> Result<serde_yaml::Value, ConfigError> {
    let mut value: serde_yaml::Value = serde_yaml::from_str(text).map_err(|e| ConfigError {
        errors: vec![FieldError {
            path: String::new(),
            message: format!("invalid YAML: {e}"),
        }],
    })?;
    env::expand_value(&mut value, &|k| std::env::var(k).ok()).map_err(|missing| ConfigError {
        errors: missing
            .into_iter()
            .map(|(path, message)| FieldError { path, message })
            .collect(),
    })?;
    Ok(value)
}

/// A listen address must be `host:port`.
pub fn check_endpoint(endpoint: &str, path: &str, errors: &mut Errors) {
    match endpoint.rsplit_once(':') {
        Some((_, port)) if port.parse::<u16>().is_ok() => {}
        _ => errors.push(path, format!("{endpoint:?} is not host:port")),
    }
}

/// Bounds shared by the settings below: time from a millisecond to a day, counts and
/// sizes well past any real deployment but short of exhausting memory or overflowing.
pub const MS: Duration = Duration::from_millis(1);
pub const HOUR: Duration = Duration::from_secs(3600);
pub const DAY: Duration = Duration::from_secs(86_400);
/// 1 TiB, in MiB.
pub const MAX_MIB: u64 = 1024 * 1024;
pub const MAX_COUNT: u64 = 100_000_000;

#[cfg(test)]
mod tests;
