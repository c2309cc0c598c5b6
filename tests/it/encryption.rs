//! Client-side encryption with age, end to end: what reaches storage does not
//! hold the data in clear, a restore with the key is identical, and one
//! without it, or with another key, fails before the target is created.

use std::os::unix::fs::PermissionsExt;

use crate::common::servers::{self, block_on};
use crate::common::{self, Cluster, Setup};

const MARKER: &str = "MARKER-c1ear-9f2e";
/// The restore every test here tries: the newest backup into `restored`.
const RESTORE: [&str; 6] = [
    "restore",
    "--job",
    "nightly",
    "--latest",
    "--target-db",
    "restored",
];

/// How many rows of database `db` hold the marker.
fn marker_rows(cluster: &Cluster, db: &str) -> String {
    cluster.psql(
        db,
        &format!("SELECT count(*) FROM \"Audit Log\".\"Entries\" WHERE \"What\" = '{MARKER}'"),
    )
}

struct Keys {
    public: String,
    secret: String,
}

fn keys() -> Keys {
    let key = age::x25519::Identity::generate();
    Keys {
        public: key.to_public().to_string(),
        secret: age::secrecy::ExposeSecret::expose_secret(&key.to_string()).to_owned(),
    }
}

fn encrypted_job(public: &str) -> String {
    format!("compression = \"none\"\nencryption = {{ recipients = [\"{public}\"] }}\n")
}

fn plant_marker(cluster: &Cluster) {
    cluster.psql(
        "app",
        &format!("INSERT INTO \"Audit Log\".\"Entries\" VALUES ('{MARKER}', now())"),
    );
}

#[test]
fn an_encrypted_backup_hides_the_data_and_restores_only_with_its_key() {
    let k = keys();
    let cluster = Cluster::start();
    cluster.load_fixtures("app");
    plant_marker(&cluster);
    let setup = Setup::with_cluster(cluster, "", &encrypted_job(&k.public));
    let run = setup.backup(&["run", "nightly"]);
    assert!(run.ok(), "{}", run.all());
    let id = setup.list()[0]["id"].as_str().unwrap().to_owned();
    let dir = setup.backups.join("nightly").join(&id);
    for name in ["data.dump.age", "globals.sql.age"] {
        let stored = std::fs::read(dir.join(name)).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert!(stored.starts_with(b"age-encryption.org/v1"), "{name}");
        assert!(
            !stored.windows(MARKER.len()).any(|w| w == MARKER.as_bytes()),
            "{name} holds the marker in clear"
        );
    }
    let manifest = std::fs::read_to_string(dir.join("manifest.json")).unwrap();
    assert!(manifest.contains("\"encryption\": \"age\""), "{manifest}");
    assert!(!manifest.contains(&k.secret) && !manifest.contains("AGE-SECRET-KEY"));

    // No key: refused before the target exists.
    let before = setup.cluster.databases();
    let none = setup.backup(&RESTORE);
    assert_eq!(none.code, 9, "{}", none.all());
    assert!(
        none.stderr
            .contains(&format!("backup {id} of job nightly is encrypted")),
        "{}",
        none.all()
    );
    assert!(
        none.stderr.contains("hint: set BACKUP_AGE_IDENTITY"),
        "{}",
        none.all()
    );
    // Another key: the same.
    let other = keys();
    let wrong = setup.backup_with(&RESTORE, &[("BACKUP_AGE_IDENTITY", other.secret.as_str())]);
    assert_eq!(wrong.code, 9, "{}", wrong.all());
    assert!(
        wrong
            .stderr
            .contains("none of the age identities given can decrypt it"),
        "{}",
        wrong.all()
    );
    assert!(!wrong.stderr.contains(&other.secret) && !wrong.stdout.contains(&other.secret));
    assert_eq!(setup.cluster.databases(), before, "no target was created");

    // A key file others may read is refused.
    let key_file = setup.work.path().join("backup.key");
    std::fs::write(&key_file, format!("# created: now\n{}\n", k.secret)).unwrap();
    std::fs::set_permissions(&key_file, std::fs::Permissions::from_mode(0o644)).unwrap();
    let env = [("BACKUP_AGE_IDENTITY", key_file.to_str().unwrap())];
    let shared = setup.backup_with(&RESTORE, &env);
    assert_eq!(shared.code, 3, "{}", shared.all());
    assert!(
        shared.stderr.contains("others may read it"),
        "{}",
        shared.all()
    );
    assert!(shared.stderr.contains("chmod 600"), "{}", shared.all());

    // The right key, from a private file: identical.
    std::fs::set_permissions(&key_file, std::fs::Permissions::from_mode(0o600)).unwrap();
    let ok = setup.backup_with(&RESTORE, &env);
    assert!(ok.ok(), "{}", ok.all());
    assert!(ok.stdout.contains("all 6 tables match"), "{}", ok.all());
    assert_eq!(marker_rows(&setup.cluster, "restored"), "1");
    let verify = setup.backup_with(&["verify", "--job", "nightly"], &env);
    assert!(verify.ok(), "{}", verify.all());
    // `export BACKUP_AGE_IDENTITY="$(cat key.txt)"`, comments and all.
    let pasted = format!(
        "# created: 2026-11-25\n# public key: {}\n{}\n",
        k.public, k.secret
    );
    let verify = setup.backup_with(
        &["verify", "--job", "nightly"],
        &[("BACKUP_AGE_IDENTITY", pasted.as_str())],
    );
    assert!(verify.ok(), "{}", verify.all());
    // A key with a typo is neither a key nor a file, and is never repeated.
    let typo = k.secret.replace("AGE-SECRET-KEY-", "AGE-SECRET-KEX-");
    let bad = setup.backup_with(
        &["--json", "verify", "--job", "nightly"],
        &[("BACKUP_AGE_IDENTITY", typo.as_str())],
    );
    assert_ne!(bad.code, 0, "{}", bad.all());
    assert!(
        bad.all()
            .contains("holds no age identity (AGE-SECRET-KEY-1...) and names no file"),
        "{}",
        bad.all()
    );
    let secret_part = &typo["AGE-SECRET-KEX-".len()..];
    assert!(!bad.all().contains(secret_part), "{}", bad.all());
    for (path, text) in texts_under(&setup.backups) {
        assert!(!text.contains(secret_part), "the key in {path}");
    }
    let unverifiable = setup.backup(&["verify", "--job", "nightly"]);
    assert_ne!(unverifiable.code, 0, "{}", unverifiable.all());
    assert!(
        unverifiable.stdout.contains("is encrypted"),
        "{}",
        unverifiable.all()
    );
}

#[test]
fn an_encrypted_backup_to_s3_holds_no_clear_data_and_restores_with_the_key() {
    let k = keys();
    let bucket = block_on(servers::create_bucket("crypt"));
    let cluster = Cluster::start();
    cluster.load_fixtures("app");
    plant_marker(&cluster);
    let section = servers::s3_section("s3", &servers::s3_endpoint(), &bucket, "");
    let setup = Setup::with_storages(cluster, "", &section, &["s3"], &encrypted_job(&k.public));
    let mut env = servers::s3_env().to_vec();
    let run = setup.backup_with(&["run", "nightly"], &env);
    assert!(run.ok(), "{}", run.all());
    let keys_in_bucket = block_on(servers::bucket_keys(&bucket));
    let data_key = keys_in_bucket
        .iter()
        .find(|k| k.ends_with("/data.dump.age"))
        .unwrap_or_else(|| panic!("{keys_in_bucket:?}"))
        .clone();
    let stored = block_on(servers::s3_object(&bucket, &data_key));
    assert!(!stored.windows(MARKER.len()).any(|w| w == MARKER.as_bytes()));

    let before = setup.cluster.databases();
    let refused = setup.backup_with(&RESTORE, &env);
    assert_eq!(refused.code, 9, "{}", refused.all());
    assert_eq!(setup.cluster.databases(), before);
    env.push(("BACKUP_AGE_IDENTITY", k.secret.as_str()));
    let ok = setup.backup_with(&RESTORE, &env);
    assert!(ok.ok(), "{}", ok.all());
    assert_eq!(marker_rows(&setup.cluster, "restored"), "1");
}

/// The command lines and environments of the running `pg_dump` and `pg_dumpall`.
fn dump_command_lines() -> Vec<(String, String)> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let path = entry.path();
        let comm = std::fs::read_to_string(path.join("comm")).unwrap_or_default();
        if comm.trim() == "pg_dump" || comm.trim() == "pg_dumpall" {
            let read = |name| {
                let bytes = std::fs::read(path.join(name)).unwrap_or_default();
                String::from_utf8_lossy(&bytes).replace('\0', " ")
            };
            out.push((read("cmdline"), read("environ")));
        }
    }
    out
}

/// Every file under `dir`, as text.
fn texts_under(dir: &std::path::Path) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut dirs = vec![dir.to_owned()];
    while let Some(d) = dirs.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            if e.path().is_dir() {
                dirs.push(e.path());
            } else if let Ok(bytes) = std::fs::read(e.path()) {
                out.push((
                    e.path().display().to_string(),
                    String::from_utf8_lossy(&bytes).into_owned(),
                ));
            }
        }
    }
    out
}

#[test]
fn no_secret_reaches_output_records_manifests_or_a_childs_argv() {
    let k = keys();
    let (_, _, sections, storage_env) = servers::s3_and_azure("secrets");
    let cluster = Cluster::start();
    cluster.load_fixtures("app");
    let setup = Setup::with_storages(
        cluster,
        "",
        &sections,
        &["disk", "s3", "blob"],
        &format!(
            "encryption = {{ recipients = [\"{}\"] }}\n\n[jobs.rt]\ntype = \"restore-test\"\nbackup_job = \"nightly\"\n",
            k.public
        ),
    );
    let mut env: Vec<(&str, &str)> = storage_env.to_vec();
    env.push(("BACKUP_AGE_IDENTITY", k.secret.as_str()));
    let secrets = [
        ("the database password", common::PASSWORD),
        ("the S3 secret", servers::S3_SECRET_ACCESS_KEY),
        ("the Azure key", servers::AZURE_KEY),
        ("the age identity", k.secret.as_str()),
    ];

    // A backup held on a lock, so its pg_dump can be looked at while it runs.
    let lock = setup.cluster.hold_lock("app", "app.users");
    let child = setup.spawn_backup_with(&["--log-format", "json", "run", "nightly"], &env);
    let mut argv = Vec::new();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while argv.is_empty() && std::time::Instant::now() < deadline {
        argv = dump_command_lines();
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    assert!(!argv.is_empty(), "no pg_dump was seen");
    lock.release();
    let out = child.wait_with_output().unwrap();
    let mut outputs = vec![common::Run::from(out)];
    for args in [
        vec!["--json", "list"],
        vec!["--json", "status"],
        vec!["--json", "config", "check"],
        vec!["verify", "--job", "nightly"],
        vec!["run", "rt"],
        vec![
            "restore",
            "--job",
            "nightly",
            "--latest",
            "--target-db",
            "copy",
        ],
        vec!["drill", "--job", "nightly", "--dry-run"],
    ] {
        outputs.push(setup.backup_with(&args, &env));
    }
    for run in &outputs {
        assert!(run.ok(), "{}", run.all());
    }
    let stored = texts_under(&setup.backups);
    assert!(stored.iter().any(|(p, _)| p.ends_with("manifest.json")));
    assert!(stored.iter().any(|(p, _)| p.contains("/reports/")));
    for (what, secret) in secrets {
        for (line, environ) in &argv {
            assert!(!line.contains(secret), "{what} in a child's argv: {line}");
            // The child needs the database password (PGPASSWORD), nothing else.
            if secret != common::PASSWORD {
                assert!(!environ.contains(secret), "{what} in a child's environment");
            }
        }
        for run in &outputs {
            assert!(
                !run.stdout.contains(secret) && !run.stderr.contains(secret),
                "{what} in output: {}",
                run.all()
            );
        }
        for (path, text) in &stored {
            assert!(!text.contains(secret), "{what} in {path}");
        }
    }
}

/// The server's programs, with `initdb` and `pg_ctl` wrapped to add the
/// environment of every run to `seen/<program>.env` first. (The server's
/// own `/proc/<pid>/environ` is overwritten by its process titles.)
fn wrapped_bindir(seen: &std::path::Path) -> tempfile::TempDir {
    let dir = tempfile::Builder::new()
        .prefix("backup-test-bin-")
        .tempdir()
        .unwrap();
    for d in [dir.path(), seen] {
        std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o777)).unwrap();
    }
    let real = common::server_bindir();
    for entry in std::fs::read_dir(&real).unwrap().flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let link = dir.path().join(&name);
        if name == "initdb" || name == "pg_ctl" {
            std::fs::write(
                &link,
                format!(
                    "#!/bin/sh\nenv >> '{}/{name}.env'\nexec '{}' \"$@\"\n",
                    seen.display(),
                    entry.path().display()
                ),
            )
            .unwrap();
            std::fs::set_permissions(&link, std::fs::Permissions::from_mode(0o755)).unwrap();
        } else {
            std::os::unix::fs::symlink(entry.path(), &link).unwrap();
        }
    }
    dir
}

#[test]
fn restore_tests_and_drills_open_an_encrypted_backup_with_the_jobs_identity_file() {
    let k = keys();
    let key_dir = tempfile::Builder::new()
        .prefix("backup-test-key-")
        .tempdir()
        .unwrap();
    let key_file = key_dir.path().join("backup.key");
    std::fs::write(&key_file, format!("{}\n", k.secret)).unwrap();
    std::fs::set_permissions(&key_file, std::fs::Permissions::from_mode(0o600)).unwrap();
    let cluster = Cluster::start();
    cluster.load_fixtures("app");
    plant_marker(&cluster);
    let seen_env = tempfile::Builder::new()
        .prefix("backup-test-env-")
        .tempdir()
        .unwrap();
    let bindir = wrapped_bindir(seen_env.path());
    let setup = Setup::with_cluster(
        cluster,
        &format!("pg_bin_dir = \"{}\"", bindir.path().display()),
        &format!(
            "encryption = {{ recipients = [\"{}\"], identity_file = \"{}\" }}\n\n\
             [jobs.rt]\ntype = \"restore-test\"\nbackup_job = \"nightly\"\n\
             checks = [{{ name = \"marker kept\", sql = \"SELECT count(*) FROM \\\"Audit Log\\\".\\\"Entries\\\" WHERE \\\"What\\\" = '{MARKER}'\", equals = 1 }}]\n",
            k.public,
            key_file.display()
        ),
    );
    let run = setup.backup(&["run", "nightly"]);
    assert!(run.ok(), "{}", run.all());

    let test = setup.backup(&["run", "rt"]);
    assert!(test.ok(), "{}", test.all());
    assert!(test.stdout.contains("marker kept"), "{}", test.all());

    // Another key given in the environment wins over the file, and fails
    // before a cluster is started.
    let other = keys();
    let refused = setup.backup_with(
        &["drill", "--job", "nightly"],
        &[("BACKUP_AGE_IDENTITY", other.secret.as_str())],
    );
    assert_eq!(refused.code, 9, "{}", refused.all());
    assert!(
        !seen_env.path().join("initdb.env").exists(),
        "no cluster was made before the key was checked"
    );
    assert!(
        refused
            .stderr
            .contains("none of the age identities given can decrypt it")
            && !refused.stdout.contains("initdb"),
        "{}",
        refused.all()
    );

    // The throwaway server runs code of the restored data as a superuser:
    // it must not inherit our key or the database password.
    let drill = setup.backup_with(
        &["drill", "--job", "nightly"],
        &[
            ("BACKUP_AGE_IDENTITY", k.secret.as_str()),
            ("PGPASSWORD", common::PASSWORD),
        ],
    );
    assert!(drill.ok(), "{}", drill.all());
    for program in ["initdb", "pg_ctl"] {
        let seen = std::fs::read_to_string(seen_env.path().join(format!("{program}.env")))
            .unwrap_or_else(|e| panic!("{program} was not run through the wrapper: {e}"));
        assert!(seen.contains("PATH="), "{program}: {seen}");
        for secret in [
            k.secret.as_str(),
            common::PASSWORD,
            "BACKUP_AGE_IDENTITY",
            "PGPASSWORD",
        ] {
            assert!(
                !seen.contains(secret),
                "{program} was given {secret}: {seen}"
            );
        }
    }
    for expected in [
        "| Result | **PASSED** |",
        "| marker kept | = 1 | 1 | passed |",
    ] {
        assert!(
            drill.stdout.contains(expected),
            "{expected}: {}",
            drill.all()
        );
    }
    assert!(!drill.stdout.contains(&k.secret) && !test.stdout.contains(&k.secret));
}

#[test]
fn a_passphrase_encrypted_backup_restores_with_it_and_is_refused_with_another() {
    const PASSPHRASE: &str = "stapled-horse-battery-7c1e";
    let cluster = Cluster::start();
    cluster.load_fixtures("app");
    plant_marker(&cluster);
    let setup = Setup::with_cluster(
        cluster,
        "",
        "compression = \"none\"\nencryption = { passphrase_env = \"BACKUP_PASSPHRASE\" }\n",
    );
    let env = [("BACKUP_PASSPHRASE", PASSPHRASE)];
    let run = setup.backup_with(&["run", "nightly"], &env);
    assert!(run.ok(), "{}", run.all());
    let id = setup.list_with(&env)[0]["id"].as_str().unwrap().to_owned();
    let dir = setup.backups.join("nightly").join(&id);
    for name in ["data.dump.age", "globals.sql.age"] {
        let stored = std::fs::read(dir.join(name)).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert!(
            !stored.windows(MARKER.len()).any(|w| w == MARKER.as_bytes()),
            "{name} holds the marker in clear"
        );
    }

    let before = setup.cluster.databases();
    let wrong = setup.backup_with(&RESTORE, &[("BACKUP_PASSPHRASE", "not-the-passphrase")]);
    assert_eq!(wrong.code, 9, "{}", wrong.all());
    assert!(
        wrong.stderr.contains(&format!("backup {id}"))
            && wrong
                .stderr
                .contains("the job's passphrase does not decrypt it")
            && wrong.stderr.contains("hint:"),
        "{}",
        wrong.all()
    );
    assert_eq!(setup.cluster.databases(), before, "no target was created");

    let ok = setup.backup_with(&RESTORE, &env);
    assert!(ok.ok(), "{}", ok.all());
    assert_eq!(marker_rows(&setup.cluster, "restored"), "1");
    let verify = setup.backup_with(&["verify", "--job", "nightly"], &env);
    assert!(verify.ok(), "{}", verify.all());
    for run in [&run, &wrong, &ok, &verify] {
        assert!(!run.all().contains(PASSPHRASE), "{}", run.all());
    }
    for (path, text) in texts_under(&setup.backups) {
        assert!(!text.contains(PASSPHRASE), "the passphrase in {path}");
    }
}

#[test]
fn an_encrypted_files_backup_verifies_and_restores_with_its_key_only() {
    let k = keys();
    let cluster = Cluster::start();
    cluster.create_db("app");
    let setup = Setup::with_cluster(cluster, "", "");
    let tree = setup.work.path().join("uploads");
    std::fs::create_dir_all(&tree).unwrap();
    std::fs::write(tree.join("secret.txt"), MARKER).unwrap();
    setup.append_to_config(&format!(
        "\n[jobs.uploads]\ntype = \"files\"\npath = \"{}\"\nstorages = [\"disk\"]\n{}",
        tree.display(),
        encrypted_job(&k.public)
    ));
    let run = setup.backup(&["run", "uploads"]);
    assert!(run.ok(), "{}", run.all());
    let with_key = [("BACKUP_AGE_IDENTITY", k.secret.as_str())];
    let run = setup.backup_with(&["verify", "--job", "uploads"], &with_key);
    assert!(run.ok(), "{}", run.all());
    let target = setup.work.path().join("restored");
    let restore = [
        "restore",
        "--job",
        "uploads",
        "--latest",
        "--target-dir",
        target.to_str().unwrap(),
    ];
    let run = setup.backup(&restore);
    assert_eq!(run.code, 9, "without the key: {}", run.all());
    assert!(!target.exists(), "nothing is made without the key");
    let run = setup.backup_with(&restore, &with_key);
    assert!(run.ok(), "{}", run.all());
    assert_eq!(
        std::fs::read_to_string(target.join("secret.txt")).unwrap(),
        MARKER
    );
}
