//! `${VAR}`, `${VAR:-default}` and `${env:VAR}` expansion, as the collector does it: after
//! the YAML is parsed, in scalar values only (never in keys), so a variable's value can
//! never become YAML text: a `#` in it is not a comment, a newline does not start a key.
//! `$$` stands for a literal `$`.
//!
//! A scalar that is exactly one reference (`limit_mib: ${LIMIT}`) takes the value's type
//! when the value is a plain integer, float or `true`/`false`, so numeric and boolean keys
//! can come from the environment; any other value, and any reference inside a longer
//! string, stays a string.

use std::collections::BTreeSet;

use serde_yaml::Value;

/// Expands every string scalar below `value`; unset variables without a default are
/// reported with the dotted path of the value that names them.
pub fn expand_value(
    value: &mut Value,
    lookup: &impl Fn(&str) -> Option<String>,
) -> Result<(), Vec<(String, String)>> {
    let mut missing = Vec::new();
    walk(value, String::new(), lookup, &mut missing);
    if missing.is_empty() {
        Ok(())
    } else {
        Err(missing)
    }
}

fn walk(
    value: &mut Value,
    path: String,
    lookup: &impl Fn(&str) -> Option<String>,
    missing: &mut Vec<(String, String)>,
) {
    match value {
        Value::String(text) => {
            if !text.contains('$') {
                return;
            }
            match expand(text, lookup) {
                Ok(expanded) => *value = typed(text, expanded),
                Err(errors) => missing.extend(errors.into_iter().map(|e| (path.clone(), e))),
            }
        }
        Value::Sequence(items) => {
            for (i, item) in items.iter_mut().enumerate() {
                walk(item, format!("{path}[{i}]"), lookup, missing);
            }
        }
        Value::Mapping(map) => {
            for (key, item) in map.iter_mut() {
                let key = match key {
                    Value::String(s) => s.clone(),
                    other => serde_yaml::to_string(other)
                        .map(|s| s.trim_end().to_owned())
                        .unwrap_or_default(),
                };
                let child = if path.is_empty() {
                    key
                } else {
                    format!("{path}.{key}")
                };
                walk(item, child, lookup, missing);
            }
        }
        Value::Tagged(tagged) => walk(&mut tagged.value, path, lookup, missing),
        Value::Null | Value::Bool(_) | Value::Number(_) => {}
    }
}

/// The expanded scalar: typed when `original` was one whole reference and the value is a
/// plain number or boolean, else a string.
fn typed(original: &str, expanded: String) -> Value {
    let whole_reference = original.starts_with("${")
        && original.ends_with('}')
        && original[2..].find('}') == Some(original.len() - 3);
    if !whole_reference {
        return Value::String(expanded);
    }
    let numeric = !expanded.is_empty()
        && expanded
            .bytes()
            .all(|b| b.is_ascii_digit() || matches!(b, b'-' | b'+' | b'.' | b'e' | b'E'))
        && expanded.bytes().any(|b| b.is_ascii_digit());
    if numeric {
        if let Ok(n) = expanded.parse::<u64>() {
            return Value::Number(n.into());
        }
        if let Ok(n) = expanded.parse::<i64>() {
            return Value::Number(n.into());
        }
        if let Ok(f) = expanded.parse::<f64>() {
            return Value::Number(f.into());
        }
    }
    match expanded.as_str() {
        "true" => Value::Bool(true),
        "false" => Value::Bool(false),
        _ => Value::String(expanded),
    }
}

/// Expands the variables of one string with `lookup`. Every unset variable without a
/// default is reported, not replaced by an empty string: a config that silently loses an
/// endpoint is worse than one that refuses to start.
pub fn expand(text: &str, lookup: impl Fn(&str) -> Option<String>) -> Result<String, Vec<String>> {
    let mut out = String::with_capacity(text.len());
    let mut missing = BTreeSet::new();
    let mut rest = text;
    while let Some(pos) = rest.find('$') {
        out.push_str(&rest[..pos]);
        let after = &rest[pos + 1..];
        if let Some(tail) = after.strip_prefix('$') {
            out.push('$');
            rest = tail;
        } else if let Some(body) = after.strip_prefix('{') {
            let Some(end) = body.find('}') else {
                missing.insert("unterminated ${".to_owned());
                out.push('$');
                rest = after;
                continue;
            };
            let expr = &body[..end];
            let (name, default) = match expr.split_once(":-") {
                Some((n, d)) => (n, Some(d)),
                None => (expr, None),
            };
            let name = name.strip_prefix("env:").unwrap_or(name);
            match (lookup(name), default) {
                (Some(v), _) => out.push_str(&v),
                (None, Some(d)) => out.push_str(d),
                (None, None) => {
                    missing.insert(format!("environment variable {name} is not set"));
                }
            }
            rest = &body[end + 1..];
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    if missing.is_empty() {
        Ok(out)
    } else {
        Err(missing.into_iter().collect())
    }
}
