//! The path-routed dispatcher's matching (spec G8): `<METHOD>
//! /api/route/<path>` runs the function whose `http_method` is the request's
//! and whose `http_path` matches segment by segment, a `:name` segment
//! binding that parameter. The match with the fewest `:` segments wins
//! (`/users/admin` over `/users/:id`); on a tie, the oldest function.

use super::definition::Definition;
use std::sync::Arc;

/// The bindings of `pattern` against `path` (its segments already
/// percent-decoded by the router), if it matches.
pub fn bind(pattern: &str, path: &str) -> Option<Vec<(String, String)>> {
    let want: Vec<&str> = pattern.trim_matches('/').split('/').collect();
    let got: Vec<&str> = path.trim_matches('/').split('/').collect();
    if want.len() != got.len() {
        return None;
    }
    let mut out = Vec::new();
    for (w, g) in want.iter().zip(&got) {
        match w.strip_prefix(':') {
            Some(name) if !g.is_empty() => {
                out.push((name.to_string(), g.to_string()));
            }
            Some(_) => return None,
            None if w == g => {}
            None => return None,
        }
    }
    Some(out)
}

/// Path parameters bound by a route: `(name, segment)` in path order.
pub type Bindings = Vec<(String, String)>;

/// The function that answers `method path` among `all` (oldest first).
pub fn choose(
    all: &[Arc<Definition>],
    method: &str,
    path: &str,
) -> Option<(Arc<Definition>, Bindings)> {
    let mut best: Option<(usize, Arc<Definition>, Bindings)> = None;
    for def in all {
        let (Some(m), Some(p)) = (&def.http_method, &def.http_path) else {
            continue;
        };
        if !m.eq_ignore_ascii_case(method) {
            continue;
        }
        let Some(bound) = bind(p, path) else { continue };
        let params = p.split('/').filter(|s| s.starts_with(':')).count();
        if best.as_ref().is_none_or(|(n, _, _)| params < *n) {
            best = Some((params, def.clone(), bound));
        }
    }
    best.map(|(_, d, b)| (d, b))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn literal_segments_beat_parameters_and_counts_must_agree() {
        assert_eq!(
            bind("/users/:id", "/users/ann"),
            Some(vec![("id".into(), "ann".into())])
        );
        assert_eq!(bind("/users/:id", "/users"), None);
        assert_eq!(bind("/users/:id", "/users/"), None);
        assert_eq!(bind("/users/admin", "/users/admin"), Some(vec![]));
        assert_eq!(bind("/a/:x/c", "/a/1/d"), None);
    }
}
