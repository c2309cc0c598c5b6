//! Proof that a restored database is the backup: the same tables with exactly
//! the rows the manifest counted in the dump's own snapshot, the extensions
//! the source had, and the operator's own checks.
//!
//! Used by `backup restore` (tables and rows), restore-test jobs and drills
//! (everything). Every check keeps what was expected and what was found, so a
//! record or a drill report shows numbers, not only a verdict.

use serde::Serialize;

use crate::catalog::Manifest;
use crate::model::{Check, show_number};
use crate::pg::{self, Connection};

/// One check, as an auditor reads it.
#[derive(Debug, Clone, Serialize)]
pub struct CheckResult {
    pub check: String,
    pub expected: String,
    pub actual: String,
    pub passed: bool,
}

/// One table's rows: the manifest's count and the restored one.
#[derive(Debug, Clone, Serialize)]
pub struct TableResult {
    pub table: String,
    pub expected: i64,
    /// `None`: the table is missing or could not be counted.
    pub actual: Option<i64>,
    /// Why it could not be counted.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct Proof {
    pub checks: Vec<CheckResult>,
    /// Every table of the manifest; mismatches first.
    pub tables: Vec<TableResult>,
    pub rows: i64,
}

impl Proof {
    pub fn failed(&self) -> Vec<&CheckResult> {
        self.checks.iter().filter(|c| !c.passed).collect()
    }

    /// Why the proof failed, naming each failed check; `None` when it passed.
    pub fn failure(&self) -> Option<String> {
        failure_of(&self.checks)
    }

    /// A record's copy of `outcome`, which flattens a proof: at most
    /// [`TABLES_RECORDED`] tables, mismatches first, and their total.
    pub fn record_of(outcome: &impl Serialize) -> serde_json::Value {
        let mut value = serde_json::to_value(outcome).unwrap_or_default();
        if let Some(list) = value["tables"].as_array_mut() {
            let total = list.len();
            list.truncate(TABLES_RECORDED);
            value["tables_total"] = total.into();
        }
        value
    }
}

/// Why `checks` failed, naming each failed one; `None` when all passed.
pub fn failure_of(checks: &[CheckResult]) -> Option<String> {
    let failed: Vec<&CheckResult> = checks.iter().filter(|c| !c.passed).collect();
    if failed.is_empty() {
        return None;
    }
    Some(format!(
        "{} of {} checks failed: {}",
        failed.len(),
        checks.len(),
        failed
            .iter()
            .map(|c| format!("{}: expected {}, found {}", c.check, c.expected, c.actual))
            .collect::<Vec<_>>()
            .join("; ")
    ))
}

/// How many tables a record lists one by one.
pub const TABLES_RECORDED: usize = 1000;

/// Checks the database `conn` is connected to against `manifest`, then runs
/// `user_checks` in a read-only session. A check that cannot run fails with
/// the server's message as what was found; only a lost connection is an error.
pub async fn prove(
    conn: &Connection,
    manifest: &Manifest,
    user_checks: &[Check],
) -> crate::error::Result<Proof> {
    let mut proof = Proof::default();
    // Table count: the same list row counts are taken from at backup time.
    let restored = pg::user_tables(conn).await?;
    proof.checks.push(CheckResult {
        check: "table count".to_owned(),
        expected: manifest.tables.len().to_string(),
        actual: restored.len().to_string(),
        passed: restored.len() == manifest.tables.len(),
    });
    let mut mismatched = 0usize;
    for table in &manifest.tables {
        let name = format!("{}.{}", table.schema, table.name);
        let (actual, error) = if restored
            .iter()
            .any(|(s, n)| *s == table.schema && *n == table.name)
        {
            match pg::count_rows(conn, &table.schema, &table.name, manifest.rows_only()).await {
                Ok(n) => (Some(n), None),
                Err(e) => (None, Some(e.message().to_owned())),
            }
        } else {
            (None, Some("no such table".to_owned()))
        };
        if actual == Some(table.rows) {
            proof.rows += table.rows;
        } else {
            mismatched += 1;
            proof.checks.push(CheckResult {
                check: format!("rows of {name}"),
                expected: table.rows.to_string(),
                actual: match (actual, &error) {
                    (Some(n), _) => n.to_string(),
                    (None, Some(e)) => e.clone(),
                    (None, None) => "unknown".to_owned(),
                },
                passed: false,
            });
        }
        proof.tables.push(TableResult {
            table: name,
            expected: table.rows,
            actual,
            error,
        });
    }
    proof.tables.sort_by_key(|t| t.actual == Some(t.expected));
    proof.checks.push(CheckResult {
        check: "exact row counts".to_owned(),
        expected: format!(
            "{} tables as in the manifest ({} rows)",
            manifest.tables.len(),
            manifest.tables.iter().map(|t| t.rows).sum::<i64>()
        ),
        actual: if mismatched == 0 {
            format!("all {} match ({} rows)", manifest.tables.len(), proof.rows)
        } else {
            format!("{mismatched} differ")
        },
        passed: mismatched == 0,
    });
    let present = pg::extensions(conn).await?;
    for ext in &manifest.extensions {
        let found = present.iter().find(|e| e.name == ext.name);
        proof.checks.push(CheckResult {
            check: format!("extension {}", ext.name),
            expected: format!("installed ({} in the backup)", ext.version),
            actual: found.map_or_else(|| "missing".to_owned(), |e| e.version.clone()),
            passed: found.is_some(),
        });
    }
    if !user_checks.is_empty() {
        read_only(conn).await?;
    }
    for check in user_checks {
        proof.checks.push(run_check(conn, check).await);
    }
    Ok(proof)
}

/// Makes the session read-only: the operator's checks read, and must not
/// change what they check.
pub async fn read_only(conn: &Connection) -> crate::error::Result<()> {
    conn.client
        .batch_execute("SET SESSION CHARACTERISTICS AS TRANSACTION READ ONLY")
        .await
        .map_err(|e| pg::query_error("making the session read-only for the checks", e))
}

/// Runs one of the operator's checks: its SQL gives one number, which
/// passes or not. A check that cannot run fails with the server's message
/// as what was found.
pub async fn run_check(conn: &Connection, check: &Check) -> CheckResult {
    let (actual, passed) = match pg::single_value(conn, &check.sql).await {
        Ok(Some(text)) => match text.trim().parse::<f64>() {
            Ok(n) => (show_number(n), check.accepts(n)),
            Err(_) => (format!("'{text}' (not a number)"), false),
        },
        Ok(None) => ("no value (NULL or no row)".to_owned(), false),
        Err(e) => (format!("error: {}", e.message()), false),
    };
    CheckResult {
        check: check.name.clone(),
        expected: check.expected(),
        actual,
        passed,
    }
}
