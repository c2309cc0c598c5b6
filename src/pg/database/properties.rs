//! What a database is besides its contents (owner, encoding, locale,
//! settings, grants, comment), as a backup records it and a restore merges
//! it with what an existing target has of its own.
//!
//! A `pg_dump` archive restored without `--create` carries none of a
//! database's own properties (`pg_dumpall --globals-only` has none either),
//! so a backup captures them here and a restore applies them (`apply.rs`).

use serde::{Deserialize, Serialize};

use crate::error::Result;
use crate::pg::connect::{Connection, query_error};

/// What a database is besides its contents, as the manifest records it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DatabaseProperties {
    pub owner: String,
    pub encoding: String,
    pub collate: String,
    pub ctype: String,
    /// `libc`, `icu` or `builtin` (PostgreSQL 15 and 17 on); absent before.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub locale_provider: Option<String>,
    /// The ICU or builtin locale, for those providers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub locale: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub icu_rules: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub comment: Option<String>,
    /// -1: no limit.
    #[serde(default = "no_limit")]
    pub connection_limit: i32,
    /// `ALTER [ROLE r IN] DATABASE ... SET name TO value`, in the server's order.
    #[serde(default)]
    pub settings: Vec<DatabaseSetting>,
    /// The database's privileges; `None`: the defaults (PUBLIC may connect
    /// and make temporary tables).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grants: Option<Vec<DatabaseGrant>>,
}

fn no_limit() -> i32 {
    -1
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DatabaseSetting {
    /// Set for this role only, in this database.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<String>,
    pub name: String,
    /// As the server stores it (`search_path` as `app, "$user"`).
    pub value: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DatabaseGrant {
    /// `None`: PUBLIC.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grantee: Option<String>,
    /// `CREATE`, `CONNECT` or `TEMPORARY`.
    pub privilege: String,
    #[serde(default)]
    pub grantable: bool,
}

impl DatabaseProperties {
    /// What a manifest's properties say that a restore could not apply
    /// safely: the values end up in SQL, so they are checked like any input.
    pub fn problem(&self) -> Option<String> {
        if let Some(s) = self.settings.iter().find(|s| !is_setting_name(&s.name)) {
            return Some(format!("'{}' is not a setting name", s.name));
        }
        if let Some(g) = self
            .grants
            .iter()
            .flatten()
            .find(|g| !PRIVILEGES.contains(&g.privilege.as_str()))
        {
            return Some(format!("'{}' is not a database privilege", g.privilege));
        }
        if let Some(p) = &self.locale_provider
            && !["libc", "icu", "builtin"].contains(&p.as_str())
        {
            return Some(format!("'{p}' is not a locale provider"));
        }
        None
    }

    /// Settings a short line can show: `work_mem=64MB, search_path=app, public`.
    pub fn summary(&self) -> String {
        let mut parts = vec![format!("owner {}", self.owner)];
        if !self.settings.is_empty() {
            parts.push(format!("{} setting(s)", self.settings.len()));
        }
        if let Some(grants) = &self.grants {
            parts.push(format!("{} grant(s)", grants.len()));
        }
        if self.comment.is_some() {
            parts.push("a comment".to_owned());
        }
        parts.join(", ")
    }
}

const PRIVILEGES: [&str; 4] = ["CREATE", "CONNECT", "TEMPORARY", "TEMP"];

fn is_setting_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '.')
}

/// The properties of database `name`, read from the shared catalogs (any
/// database of the server can see them).
pub async fn properties(conn: &Connection, name: &str) -> Result<DatabaseProperties> {
    let what = |e| query_error(&format!("reading the properties of database {name}"), e);
    // to_jsonb: the locale columns differ between majors (daticulocale in
    // 15 and 16, datlocale from 17), and a missing key is simply absent.
    let row = conn
        .client
        .query_one(
            "SELECT pg_get_userbyid(d.datdba)::text, pg_encoding_to_char(d.encoding)::text, \
                    d.datcollate::text, d.datctype::text, \
                    shobj_description(d.oid, 'pg_database'), d.datconnlimit, d.datacl IS NOT NULL, \
                    CASE to_jsonb(d) ->> 'datlocprovider' \
                         WHEN 'c' THEN 'libc' WHEN 'i' THEN 'icu' WHEN 'b' THEN 'builtin' END, \
                    coalesce(to_jsonb(d) ->> 'datlocale', to_jsonb(d) ->> 'daticulocale'), \
                    to_jsonb(d) ->> 'daticurules' \
             FROM pg_database d WHERE d.datname = $1",
            &[&name],
        )
        .await
        .map_err(what)?;
    let has_acl: bool = row.get(6);
    let grants = if has_acl {
        let rows = conn
            .client
            .query(
                "SELECT CASE WHEN a.grantee = 0 THEN NULL ELSE pg_get_userbyid(a.grantee)::text END, \
                        a.privilege_type, a.is_grantable \
                 FROM pg_database d, aclexplode(d.datacl) a WHERE d.datname = $1",
                &[&name],
            )
            .await
            .map_err(what)?;
        Some(
            rows.iter()
                .map(|r| DatabaseGrant {
                    grantee: r.get(0),
                    privilege: r.get(1),
                    grantable: r.get(2),
                })
                .collect(),
        )
    } else {
        None
    };
    let settings = conn
        .client
        .query(
            "SELECT CASE WHEN s.setrole = 0 THEN NULL ELSE pg_get_userbyid(s.setrole)::text END, c.setting \
             FROM pg_db_role_setting s JOIN pg_database d ON d.oid = s.setdatabase, \
                  unnest(s.setconfig) WITH ORDINALITY AS c(setting, n) \
             WHERE d.datname = $1 ORDER BY s.setrole, c.n",
            &[&name],
        )
        .await
        .map_err(what)?;
    let settings = settings
        .iter()
        .filter_map(|r| {
            let setting: String = r.get(1);
            let (name, value) = setting.split_once('=')?;
            Some(DatabaseSetting {
                role: r.get(0),
                name: name.to_owned(),
                value: value.to_owned(),
            })
        })
        .collect();
    let provider: Option<String> = row.get(7);
    let locale = match provider.as_deref() {
        Some("icu" | "builtin") => row.get(8),
        _ => None,
    };
    Ok(DatabaseProperties {
        owner: row.get(0),
        encoding: row.get(1),
        collate: row.get(2),
        ctype: row.get(3),
        comment: row.get(4),
        connection_limit: row.get(5),
        settings,
        grants,
        icu_rules: if provider.as_deref() == Some("icu") {
            row.get(9)
        } else {
            None
        },
        locale_provider: provider,
        locale,
    })
}

/// The properties a restored database ends up with: the backup's, with what
/// an existing target has of its own kept over them (its owner, encoding and
/// locale, its settings, privileges, comment and connection limit), since
/// that is how applications reach the database being replaced. `no_owner`
/// and `no_acl` leave the backup's owner and privileges out, as they leave
/// out those of the objects inside.
pub fn merge(
    backup: Option<&DatabaseProperties>,
    target: Option<&DatabaseProperties>,
    no_owner: bool,
    no_acl: bool,
) -> Option<DatabaseProperties> {
    let mut from_backup = backup.cloned();
    if let Some(b) = from_backup.as_mut() {
        if no_acl {
            b.grants = None;
        }
        if no_owner {
            b.owner = String::new();
        }
    }
    let Some(target) = target else {
        return from_backup;
    };
    let mut merged = target.clone();
    if let Some(b) = from_backup {
        for setting in b.settings {
            if !merged
                .settings
                .iter()
                .any(|s| s.role == setting.role && s.name == setting.name)
            {
                merged.settings.push(setting);
            }
        }
        if merged.grants.is_none() {
            merged.grants = b.grants;
        }
        if merged.comment.is_none() {
            merged.comment = b.comment;
        }
        if merged.connection_limit == -1 {
            merged.connection_limit = b.connection_limit;
        }
    }
    Some(merged)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn props(owner: &str) -> DatabaseProperties {
        DatabaseProperties {
            owner: owner.into(),
            encoding: "UTF8".into(),
            collate: "C".into(),
            ctype: "C".into(),
            locale_provider: Some("libc".into()),
            locale: None,
            icu_rules: None,
            comment: None,
            connection_limit: -1,
            settings: vec![],
            grants: None,
        }
    }

    fn setting(role: Option<&str>, name: &str, value: &str) -> DatabaseSetting {
        DatabaseSetting {
            role: role.map(str::to_owned),
            name: name.into(),
            value: value.into(),
        }
    }

    #[test]
    fn a_manifest_cannot_smuggle_sql_in_names() {
        let mut p = props("app");
        p.settings = vec![setting(None, "work_mem TO 1; DROP DATABASE x; SET a", "1")];
        assert!(p.problem().is_some());
        let mut p = props("app");
        p.grants = Some(vec![DatabaseGrant {
            grantee: None,
            privilege: "ALL ON DATABASE x TO evil; --".into(),
            grantable: false,
        }]);
        assert!(p.problem().is_some());
        assert!(props("app").problem().is_none());
    }

    #[test]
    fn an_existing_target_keeps_its_own_and_gains_what_the_backup_adds() {
        let mut backup = props("app");
        backup.settings = vec![
            setting(None, "work_mem", "64MB"),
            setting(Some("app_reader"), "statement_timeout", "5s"),
        ];
        backup.comment = Some("from the backup".into());
        backup.grants = Some(vec![DatabaseGrant {
            grantee: Some("app_reader".into()),
            privilege: "CONNECT".into(),
            grantable: false,
        }]);
        let mut target = props("owner_here");
        target.settings = vec![setting(None, "work_mem", "1GB")];

        let merged = merge(Some(&backup), Some(&target), false, false).unwrap();
        assert_eq!(merged.owner, "owner_here");
        assert_eq!(
            merged.settings,
            vec![
                setting(None, "work_mem", "1GB"),
                setting(Some("app_reader"), "statement_timeout", "5s")
            ]
        );
        assert_eq!(merged.comment.as_deref(), Some("from the backup"));
        assert_eq!(merged.grants, backup.grants);

        // A new database is the backup's; --no-owner and --no-acl leave those out.
        let fresh = merge(Some(&backup), None, true, true).unwrap();
        assert_eq!(fresh.owner, "");
        assert_eq!(fresh.grants, None);
        assert_eq!(fresh.settings, backup.settings);
        assert_eq!(merge(None, None, false, false), None);
    }
}
