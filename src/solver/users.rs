//! Resolution of user and group names against a stage's `/etc/passwd` and `/etc/group`.

use anyhow::{anyhow, Result};

/// A resolved `user[:group]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Owner {
    /// Numeric user id.
    pub uid: u32,
    /// Numeric group id.
    pub gid: u32,
}

/// One `/etc/passwd` line's useful fields.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PasswdEntry {
    /// Login name.
    pub name: String,
    /// User id.
    pub uid: u32,
    /// Primary group id.
    pub gid: u32,
    /// Home directory.
    pub home: String,
}

/// Parses `/etc/passwd` text, skipping malformed lines.
pub fn parse_passwd(text: &str) -> Vec<PasswdEntry> {
    text.lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            if f.len() < 7 || l.starts_with('#') {
                return None;
            }
            Some(PasswdEntry {
                name: f[0].to_string(),
                uid: f[2].parse().ok()?,
                gid: f[3].parse().ok()?,
                home: f[5].to_string(),
            })
        })
        .collect()
}

/// Parses `/etc/group` text into (name, gid, members).
pub fn parse_group(text: &str) -> Vec<(String, u32, Vec<String>)> {
    text.lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            if f.len() < 4 || l.starts_with('#') {
                return None;
            }
            let members = f[3]
                .split(',')
                .filter(|m| !m.is_empty())
                .map(str::to_string)
                .collect();
            Some((f[0].to_string(), f[2].parse().ok()?, members))
        })
        .collect()
}

/// Resolves a `--chown`/`USER` spec. Names are looked up in `passwd`/`group` (the files'
/// text, None when the stage has no such file); a user without a group gets its primary
/// group when named, or the same number as the uid when numeric (as Docker documents).
pub fn resolve_owner(spec: &str, passwd: Option<&str>, group: Option<&str>) -> Result<Owner> {
    let (user, grp) = match spec.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (spec, None),
    };
    if user.is_empty() && grp.is_none_or(str::is_empty) {
        return Err(anyhow!("invalid user {spec:?}"));
    }
    let users = passwd.map(parse_passwd).unwrap_or_default();
    // `:GROUP` alone is root with that group, as BuildKit reads it.
    let user = if user.is_empty() { "0" } else { user };
    let (uid, primary) = match user.parse::<u32>() {
        Ok(uid) => (uid, None),
        Err(_) => {
            if passwd.is_none() {
                return Err(anyhow!(
                    "unable to find user {user}: no /etc/passwd in the stage's filesystem"
                ));
            }
            let e = users.iter().find(|e| e.name == user).ok_or_else(|| {
                anyhow!("unable to find user {user}: no matching entries in passwd file")
            })?;
            (e.uid, Some(e.gid))
        }
    };
    let gid = match grp {
        None | Some("") => primary.unwrap_or(uid),
        Some(g) => match g.parse::<u32>() {
            Ok(gid) => gid,
            Err(_) => {
                if group.is_none() {
                    return Err(anyhow!(
                        "unable to find group {g}: no /etc/group in the stage's filesystem"
                    ));
                }
                parse_group(group.unwrap_or(""))
                    .into_iter()
                    .find(|(name, _, _)| name == g)
                    .map(|(_, gid, _)| gid)
                    .ok_or_else(|| {
                        anyhow!("unable to find group {g}: no matching entries in group file")
                    })?
            }
        },
    };
    Ok(Owner { uid, gid })
}

/// Who a RUN step runs as: ids, supplementary groups and home directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunUser {
    /// User id.
    pub uid: u32,
    /// Primary group id.
    pub gid: u32,
    /// Supplementary groups (the primary one included).
    pub groups: Vec<u32>,
    /// Home directory (for `HOME` when the environment has none).
    pub home: String,
}

/// Resolves the config's `USER` for a RUN step. `name|uid` runs with the user's primary
/// group and every group of `/etc/group` listing the user; `user:group` with that group
/// only; a uid without a passwd entry with gid 0; an unknown name is Docker's error.
pub fn resolve_run_user(spec: &str, passwd: Option<&str>, group: Option<&str>) -> Result<RunUser> {
    let spec = if spec.is_empty() { "0" } else { spec };
    let users = passwd.map(parse_passwd).unwrap_or_default();
    let (user, grp) = match spec.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (spec, None),
    };
    let entry = match user.parse::<u32>() {
        Ok(uid) => users.iter().find(|e| e.uid == uid).cloned(),
        Err(_) => Some(
            users
                .iter()
                .find(|e| e.name == user)
                .cloned()
                .ok_or_else(|| {
                    anyhow!("unable to find user {user}: no matching entries in passwd file")
                })?,
        ),
    };
    let uid = match &entry {
        Some(e) => e.uid,
        None => user
            .parse::<u32>()
            .map_err(|_| anyhow!("invalid user {spec:?}"))?,
    };
    let home = entry.as_ref().map(|e| e.home.clone()).unwrap_or_else(|| {
        if uid == 0 {
            "/root".into()
        } else {
            "/".into()
        }
    });
    if let Some(g) = grp.filter(|g| !g.is_empty()) {
        let gid = resolve_owner(&format!("{uid}:{g}"), passwd, group)?.gid;
        return Ok(RunUser {
            uid,
            gid,
            groups: vec![gid],
            home,
        });
    }
    let gid = entry.as_ref().map_or(0, |e| e.gid);
    let mut groups = vec![gid];
    if let Some(e) = &entry {
        for (_, g, members) in parse_group(group.unwrap_or("")) {
            if members.contains(&e.name) && !groups.contains(&g) {
                groups.push(g);
            }
        }
    }
    Ok(RunUser {
        uid,
        gid,
        groups,
        home,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn run_users_get_their_supplementary_groups() {
        let r = |s| resolve_run_user(s, Some(PASSWD), Some(GROUP));
        let app = r("app").unwrap();
        assert_eq!(
            (app.uid, app.gid, app.groups.clone()),
            (1000, 1001, vec![1001, 2000])
        );
        assert_eq!(app.home, "/home/app");
        assert_eq!(r("1000").unwrap().groups, vec![1001, 2000]);
        assert_eq!(r("app:extra").unwrap().groups, vec![2000]);
        let nobody = r("4242").unwrap();
        assert_eq!(
            (nobody.gid, nobody.groups, nobody.home),
            (0, vec![0], "/".to_string())
        );
        assert_eq!(r("").unwrap().home, "/root");
        let e = r("ghost").unwrap_err().to_string();
        assert_eq!(
            e,
            "unable to find user ghost: no matching entries in passwd file"
        );
    }

    const PASSWD: &str =
        "root:x:0:0:root:/root:/bin/sh\napp:x:1000:1001:App:/home/app:/bin/sh\nbroken\n";
    const GROUP: &str = "root:x:0:\napp:x:1001:\nextra:x:2000:app\n";

    #[test]
    fn resolves_names_and_numbers() {
        let r = |s| resolve_owner(s, Some(PASSWD), Some(GROUP));
        assert_eq!(
            r("app").unwrap(),
            Owner {
                uid: 1000,
                gid: 1001
            }
        );
        assert_eq!(
            r("app:extra").unwrap(),
            Owner {
                uid: 1000,
                gid: 2000
            }
        );
        assert_eq!(r("42").unwrap(), Owner { uid: 42, gid: 42 });
        assert_eq!(r("42:7").unwrap(), Owner { uid: 42, gid: 7 });
        assert_eq!(r("0:extra").unwrap(), Owner { uid: 0, gid: 2000 });
        // A group alone is root with that group (BuildKit).
        assert_eq!(r(":2000").unwrap(), Owner { uid: 0, gid: 2000 });
        assert_eq!(r(":extra").unwrap(), Owner { uid: 0, gid: 2000 });
        assert!(r(":").is_err() && r("").is_err());
        assert!(r("nobody")
            .unwrap_err()
            .to_string()
            .contains("unable to find user nobody"));
        assert!(r("app:nogroup").is_err());
        assert!(resolve_owner("app", None, None).is_err());
        assert_eq!(
            resolve_owner("5:6", None, None).unwrap(),
            Owner { uid: 5, gid: 6 }
        );
    }

    #[test]
    fn parses_group_members() {
        let g = parse_group(GROUP);
        assert_eq!(g[2], ("extra".into(), 2000, vec!["app".into()]));
    }
}
