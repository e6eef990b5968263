//! Where each dialect's endpoints live (`spec/dialects.md` §1): the
//! documented paths by default, any of them movable with
//! `--mounts NAME=PATH,...`. A moved endpoint answers at its new path only
//! (so EVA can take `/ws` once General Bots moves away). The optional EVA
//! listener serves EVA alone at the paths its document uses, `/ws` and
//! `/health`.
//!
//! The route table keeps the documented paths; a request's path is mapped
//! to them here before it is resolved.

use std::borrow::Cow;

/// A movable endpoint: one exact path, or the children of a prefix.
struct MountPoint {
    name: &'static str,
    default: &'static str,
    /// Empty: `default` itself. Otherwise `default/<child>` and below.
    children: &'static [&'static str],
}

const POINTS: &[MountPoint] = &[
    MountPoint {
        name: "general-bots",
        default: "/ws",
        children: &[],
    },
    MountPoint {
        name: "meet",
        default: "/ws/meet",
        children: &[],
    },
    MountPoint {
        name: "fluxbase",
        default: "/ai/ws",
        children: &[],
    },
    MountPoint {
        name: "fluxbase-chatbots",
        default: "/api/v1/ai",
        children: &["chatbots"],
    },
    MountPoint {
        name: "eva",
        default: "/eva/ws",
        children: &[],
    },
    MountPoint {
        name: "eva-health",
        default: "/eva/health",
        children: &[],
    },
    MountPoint {
        name: "lanonasis",
        default: "/api/v1",
        children: &["stream", "memory", "memories"],
    },
];

/// Which listener a connection came in on.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Listener {
    #[default]
    Main,
    /// `--eva-listen`: EVA's `/ws` and `/health` only.
    Eva,
}

/// The configured moves: (mount point index, new path).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Mounts {
    moved: Vec<(usize, String)>,
}

/// The names `--mounts` accepts, with their default paths (for `--help`
/// and errors).
pub fn describe() -> String {
    POINTS
        .iter()
        .map(|p| match p.children {
            [] => format!("{} ({})", p.name, p.default),
            kids => format!("{} ({}/{{{}}})", p.name, p.default, kids.join(",")),
        })
        .collect::<Vec<_>>()
        .join(", ")
}

impl Mounts {
    /// Parses `NAME=PATH,...` (empty: every endpoint at its documented path).
    pub fn parse(text: &str) -> Result<Mounts, String> {
        let mut moved: Vec<(usize, String)> = Vec::new();
        for entry in text.split(',').map(str::trim).filter(|e| !e.is_empty()) {
            let (name, path) = entry
                .split_once('=')
                .ok_or_else(|| format!("`--mounts` entries are NAME=PATH, got `{entry}`"))?;
            let i = POINTS
                .iter()
                .position(|p| p.name == name.trim())
                .ok_or_else(|| {
                    format!("`--mounts`: no endpoint `{name}`; known: {}", describe())
                })?;
            let path = path.trim().trim_end_matches('/');
            if !path.starts_with('/') || path.len() < 2 || path.contains(['?', '#', ' ']) {
                return Err(format!(
                    "`--mounts`: `{name}` needs a path like /chat/ws, got `{path}`"
                ));
            }
            if path == "/api" || (path.starts_with("/api/") && !path.starts_with("/api/v1/")) {
                return Err(format!(
                    "`--mounts`: `{path}` is among the ekoDB routes (/api/...)"
                ));
            }
            if moved.iter().any(|(j, p)| *j == i || p == path) {
                return Err(format!("`--mounts`: `{name}` or `{path}` appears twice"));
            }
            moved.push((i, path.to_string()));
        }
        let mounts = Mounts { moved };
        // No endpoint may land on another's (then one would silently vanish).
        for (i, p) in POINTS.iter().enumerate() {
            let at = mounts.path_of(i);
            let paths: Vec<String> = match p.children {
                [] => vec![at.to_string()],
                kids => kids.iter().map(|k| format!("{at}/{k}")).collect(),
            };
            for (j, other) in POINTS.iter().enumerate() {
                let taken = paths
                    .iter()
                    .find(|q| j != i && under(other, mounts.path_of(j), q).is_some());
                if let Some(clash) = taken {
                    return Err(format!(
                        "`--mounts`: {} at {clash} would take {}'s path; move {} too",
                        p.name, other.name, other.name
                    ));
                }
            }
        }
        Ok(mounts)
    }

    /// Where endpoint `i` answers.
    fn path_of(&self, i: usize) -> &str {
        self.moved
            .iter()
            .find(|(j, _)| *j == i)
            .map_or(POINTS[i].default, |(_, p)| p.as_str())
    }

    /// Whether no endpoint was moved (`resolve` is then the identity on
    /// the main listener).
    pub fn moves_nothing(&self) -> bool {
        self.moved.is_empty()
    }

    /// The documented path a request's path stands for on `listener`, or
    /// `None` when nothing is mounted there.
    pub fn resolve<'p>(&self, listener: Listener, path: &'p str) -> Option<Cow<'p, str>> {
        if listener == Listener::Eva {
            return match path.trim_end_matches('/') {
                "/ws" => Some(Cow::Borrowed("/eva/ws")),
                "/health" => Some(Cow::Borrowed("/eva/health")),
                _ => None,
            };
        }
        // Longest new path first: a move to /x/ws wins over one to /x.
        let mut moved: Vec<&(usize, String)> = self.moved.iter().collect();
        moved.sort_by_key(|(_, p)| std::cmp::Reverse(p.len()));
        for (i, at) in moved {
            if let Some(rest) = under(&POINTS[*i], at, path) {
                return Some(Cow::Owned(format!("{}{rest}", POINTS[*i].default)));
            }
        }
        let hidden = self
            .moved
            .iter()
            .any(|(i, _)| under(&POINTS[*i], POINTS[*i].default, path).is_some());
        (!hidden).then_some(Cow::Borrowed(path))
    }
}

/// The part of `path` after `base` if it falls under the mount point there.
fn under<'p>(point: &MountPoint, base: &str, path: &'p str) -> Option<&'p str> {
    let rest = path.strip_prefix(base)?;
    if point.children.is_empty() {
        return (rest.is_empty() || rest == "/").then_some("");
    }
    let child = rest.strip_prefix('/')?;
    let head = child.split('/').next().unwrap_or_default();
    point.children.contains(&head).then_some(rest)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn documented_paths_by_default() {
        let m = Mounts::default();
        for p in ["/ws", "/eva/ws", "/api/v1/memory/x", "/api/health"] {
            assert_eq!(m.resolve(Listener::Main, p).as_deref(), Some(p));
        }
    }

    #[test]
    fn a_moved_endpoint_answers_only_at_its_new_path() {
        let m = Mounts::parse("general-bots=/gb/ws, eva=/ws, lanonasis=/lano/v1").unwrap();
        let r = |p: &str| m.resolve(Listener::Main, p).map(|c| c.into_owned());
        assert_eq!(r("/ws").as_deref(), Some("/eva/ws"));
        assert_eq!(r("/gb/ws").as_deref(), Some("/ws"));
        assert_eq!(r("/eva/ws"), None);
        assert_eq!(
            r("/lano/v1/memory/m1").as_deref(),
            Some("/api/v1/memory/m1")
        );
        assert_eq!(r("/lano/v1/stream").as_deref(), Some("/api/v1/stream"));
        assert_eq!(r("/api/v1/stream"), None);
        // Not part of the moved endpoint: untouched.
        assert_eq!(
            r("/api/v1/ai/chatbots").as_deref(),
            Some("/api/v1/ai/chatbots")
        );
        assert_eq!(r("/ws/meet").as_deref(), Some("/ws/meet"));
    }

    #[test]
    fn the_eva_listener_serves_eva_alone() {
        let m = Mounts::default();
        assert_eq!(m.resolve(Listener::Eva, "/ws").as_deref(), Some("/eva/ws"));
        assert_eq!(
            m.resolve(Listener::Eva, "/health").as_deref(),
            Some("/eva/health")
        );
        assert_eq!(m.resolve(Listener::Eva, "/api/health"), None);
    }

    #[test]
    fn bad_mounts_are_refused() {
        for bad in [
            "eva",
            "nope=/x",
            "eva=ws",
            "eva=/api/ws",
            "eva=/a,meet=/a",
            "eva=/a,eva=/b",
            // Would take General Bots' /ws, and the memory list.
            "eva=/ws",
            "eva=/api/v1/memory",
        ] {
            assert!(Mounts::parse(bad).is_err(), "{bad}");
        }
    }
}
