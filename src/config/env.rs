//! `${VAR}`, `${VAR:-default}` and `${env:VAR}` expansion of config text before it is
//! parsed, as the collector does. `$$` stands for a literal `$`.

use std::collections::BTreeSet;

/// Expands variables with `lookup`. Every unset variable without a default is reported,
/// not replaced by an empty string: a config that silently loses an endpoint is worse
/// than one that refuses to start.
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
