//! TLS to PostgreSQL against a real server that refuses sessions without it,
//! with certificates made here: `sslmode` from the url is honoured by our own
//! connections and by pg_dump and pg_restore, and a certificate that does not
//! check out is refused with a message that says why.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::common::{Cluster, Setup};

/// A CA, a server certificate it signed for `localhost` only, and a second
/// CA that signed nothing here.
struct Certs {
    _dir: tempfile::TempDir,
    ca: PathBuf,
    wrong_ca: PathBuf,
    server_cert: PathBuf,
    server_key: PathBuf,
}

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .current_dir(dir)
        .args(args)
        .output()
        .expect("run openssl (scripts/test installs it)");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn make_certs() -> Certs {
    let dir = tempfile::Builder::new()
        .prefix("backup-test-tls-")
        .tempdir()
        .unwrap();
    let d = dir.path();
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
    ];
    for (name, subject) in [("ca", "/CN=backup test CA"), ("wrong-ca", "/CN=another CA")] {
        let key = format!("{name}.key");
        let crt = format!("{name}.crt");
        let mut args = vec!["req", "-x509"];
        args.extend(ec);
        args.extend([
            "-keyout", &key, "-out", &crt, "-days", "2", "-subj", subject,
        ]);
        openssl(d, &args);
    }
    let mut args = vec!["req"];
    args.extend(ec);
    args.extend([
        "-keyout",
        "server.key",
        "-out",
        "server.csr",
        "-subj",
        "/CN=localhost",
    ]);
    openssl(d, &args);
    // Made for the name `localhost` only: reached as 127.0.0.1, the chain
    // checks out (verify-ca) but the name does not (verify-full).
    std::fs::write(
        d.join("server.ext"),
        "subjectAltName=DNS:localhost\nextendedKeyUsage=serverAuth\nbasicConstraints=CA:FALSE\n",
    )
    .unwrap();
    openssl(
        d,
        &[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.crt",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            "server.crt",
            "-days",
            "2",
            "-extfile",
            "server.ext",
        ],
    );
    Certs {
        ca: d.join("ca.crt"),
        wrong_ca: d.join("wrong-ca.crt"),
        server_cert: d.join("server.crt"),
        server_key: d.join("server.key"),
        _dir: dir,
    }
}

/// A backup, and its restore into `restored`: pg_dump, pg_restore and our
/// own connections all reached the server.
fn backs_up_and_restores(setup: &Setup) {
    let run = setup.backup(&["run", "nightly"]);
    assert!(run.ok(), "{}", run.all());
    let run = setup.backup(&[
        "restore",
        "--job",
        "nightly",
        "--latest",
        "--target-db",
        "restored",
    ]);
    assert!(run.ok(), "{}", run.all());
}

fn tls_setup() -> (Setup, Certs) {
    let certs = make_certs();
    let cluster = Cluster::start();
    cluster.load_fixtures("app");
    cluster.require_tls(&certs.server_cert, &certs.server_key);
    (Setup::with_cluster(cluster, "", ""), certs)
}

#[test]
fn a_tls_only_server_is_reached_with_require_and_refused_with_the_wrong_ca() {
    let (setup, certs) = tls_setup();
    let base = setup.cluster.url("app");
    let port = setup.cluster.port;

    // The server really refuses sessions without TLS.
    setup.use_url(&format!("{base}?sslmode=disable"));
    let run = setup.backup(&["run", "nightly"]);
    assert_eq!(run.code, 4, "{}", run.all());
    assert!(
        run.stderr.contains("no encryption") && run.stderr.contains("set sslmode=require"),
        "{}",
        run.all()
    );

    // require: encrypted, certificate not checked; pg_dump and pg_restore
    // get the same url and reach the server too.
    setup.use_url(&format!("{base}?sslmode=require"));
    backs_up_and_restores(&setup);
    assert_eq!(
        setup.cluster.table_digests("restored"),
        setup.cluster.table_digests("app")
    );
    let backups = setup.list().len();

    // verify-full with a CA that did not sign the server's certificate.
    let wrong = certs.wrong_ca.display();
    setup.use_url(&format!("{base}?sslmode=verify-full&sslrootcert={wrong}"));
    let run = setup.backup(&["run", "nightly"]);
    assert_eq!(run.code, 4, "{}", run.all());
    assert!(
        run.stderr.contains("TLS") && run.stderr.contains("not signed by the CA in sslrootcert"),
        "{}",
        run.all()
    );
    assert_eq!(setup.list().len(), backups, "nothing is stored");

    // The right CA, but the certificate is for `localhost`, not 127.0.0.1.
    let ca = certs.ca.display();
    setup.use_url(&format!("{base}?sslmode=verify-full&sslrootcert={ca}"));
    let run = setup.backup(&["run", "nightly"]);
    assert_eq!(run.code, 4, "{}", run.all());
    assert!(
        run.stderr.contains("not valid for name") && run.stderr.contains("verify-ca"),
        "{}",
        run.all()
    );

    // verify-ca checks the chain only: our connection and pg_dump's pass.
    setup.use_url(&format!("{base}?sslmode=verify-ca&sslrootcert={ca}"));
    let run = setup.backup(&["run", "nightly"]);
    assert!(run.ok(), "{}", run.all());

    // verify-full by the name the certificate is for, key=value form.
    setup.use_url(&format!(
        "host=localhost port={port} user=postgres dbname=app sslmode=verify-full sslrootcert='{ca}'"
    ));
    let run = setup.backup(&["run", "nightly"]);
    assert!(run.ok(), "{}", run.all());
    assert_eq!(setup.list().len(), backups + 2);
}

#[test]
fn a_verify_mode_without_its_ca_file_is_a_config_error() {
    let setup = Setup::new("", "");
    let base = setup.cluster.url("app");
    setup.use_url(&format!(
        "{base}?sslmode=verify-full&sslrootcert=/nonexistent/ca.crt"
    ));
    for args in [&["config", "check"][..], &["run", "nightly"][..]] {
        let run = setup.backup(args);
        assert_eq!(run.code, 3, "{}", run.all());
        assert!(
            run.stderr
                .contains("sslrootcert /nonexistent/ca.crt does not exist")
                && run.stderr.contains("hint:"),
            "{}",
            run.all()
        );
    }
    setup.use_url(&format!("{base}?sslmode=verify-everything"));
    let run = setup.backup(&["config", "check"]);
    assert_eq!(run.code, 3, "{}", run.all());
    assert!(
        run.stderr.contains("sslmode 'verify-everything'"),
        "{}",
        run.all()
    );
}

#[test]
fn the_default_mode_uses_tls_when_offered_and_env_settings_apply() {
    let (setup, certs) = tls_setup();
    // No sslmode: prefer, as libpq; the server takes TLS sessions only.
    let run = setup.backup(&["run", "nightly"]);
    assert!(run.ok(), "{}", run.all());
    // PGSSLMODE and PGSSLROOTCERT apply when the url says nothing.
    let wrong = certs.wrong_ca.to_str().unwrap();
    let run = setup.backup_with(
        &["run", "nightly"],
        &[("PGSSLMODE", "verify-ca"), ("PGSSLROOTCERT", wrong)],
    );
    assert_eq!(run.code, 4, "{}", run.all());
    assert!(run.stderr.contains("UnknownIssuer"), "{}", run.all());
    let ca = certs.ca.to_str().unwrap();
    let run = setup.backup_with(
        &["run", "nightly"],
        &[("PGSSLMODE", "verify-ca"), ("PGSSLROOTCERT", ca)],
    );
    assert!(run.ok(), "{}", run.all());
}

#[test]
fn a_self_signed_certificate_trusted_as_its_own_root_and_prefer_falling_back() {
    // PostgreSQL's documented recipe: one self-signed certificate (a CA by
    // OpenSSL's defaults), which clients are given as sslrootcert.
    let dir = tempfile::Builder::new()
        .prefix("backup-test-tls-")
        .tempdir()
        .unwrap();
    openssl(
        dir.path(),
        &[
            "req",
            "-new",
            "-x509",
            "-days",
            "2",
            "-nodes",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-keyout",
            "server.key",
            "-out",
            "server.crt",
            "-subj",
            "/CN=localhost",
            "-addext",
            "subjectAltName=DNS:localhost",
        ],
    );
    let own = dir.path().join("server.crt");
    let cluster = Cluster::start();
    cluster.load_fixtures("app");
    // TLS offered, sessions without it still taken.
    cluster.enable_tls(&own, &dir.path().join("server.key"), false);
    let setup = Setup::with_cluster(cluster, "", "");
    let port = setup.cluster.port;
    setup.use_url(&format!(
        "host=localhost port={port} user=postgres dbname=app sslmode=verify-full sslrootcert={}",
        own.display()
    ));
    let run = setup.backup(&["run", "nightly"]);
    assert!(run.ok(), "{}", run.all());

    // Only a hostaddr: TCP, and TLS is used (the address is the name).
    setup.use_url(&format!(
        "hostaddr=127.0.0.1 port={port} user=postgres dbname=app sslmode=require"
    ));
    let run = setup.backup(&["run", "nightly"]);
    assert!(run.ok(), "{}", run.all());

    // An old ~/.postgresql/root.crt that signed nothing here: under prefer,
    // libpq falls back to a session without TLS, and so do we.
    let certs = make_certs();
    let home = tempfile::Builder::new()
        .prefix("backup-test-home-")
        .tempdir()
        .unwrap();
    std::fs::create_dir(home.path().join(".postgresql")).unwrap();
    std::fs::copy(&certs.wrong_ca, home.path().join(".postgresql/root.crt")).unwrap();
    setup.use_url(&setup.cluster.url("app"));
    let home_env = [("HOME", home.path().to_str().unwrap())];
    let run = setup.backup_with(&["run", "nightly"], &home_env);
    assert!(run.ok(), "{}", run.all());
    assert_eq!(setup.list().len(), 3);
}

#[test]
fn a_client_certificate_logs_in_where_the_server_asks_for_one() {
    let certs = make_certs();
    let d = certs.ca.parent().unwrap().to_owned();
    // A client certificate for the role `postgres`, signed by the CA.
    let mut args = vec!["req"];
    args.extend([
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
    ]);
    args.extend([
        "-keyout",
        "client.key",
        "-out",
        "client.csr",
        "-subj",
        "/CN=postgres",
    ]);
    openssl(&d, &args);
    openssl(
        &d,
        &[
            "x509",
            "-req",
            "-in",
            "client.csr",
            "-CA",
            "ca.crt",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            "client.crt",
            "-days",
            "2",
        ],
    );
    let key = d.join("client.key");
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
    let cluster = Cluster::start();
    cluster.load_fixtures("app");
    // The certificate is the only way in over TCP.
    cluster.enable_tls_with(
        &certs.server_cert,
        &certs.server_key,
        "hostssl all all 127.0.0.1/32 cert\nhostssl all all ::1/128 cert\n",
        Some(&certs.ca),
    );
    let setup = Setup::with_cluster(cluster, "", "");
    let port = setup.cluster.port;
    let base = format!(
        "postgresql://postgres@localhost:{port}/app?sslmode=verify-full&sslrootcert={}",
        certs.ca.display()
    );
    setup.use_url(&format!(
        "{base}&sslcert={}&sslkey={}",
        d.join("client.crt").display(),
        key.display()
    ));
    backs_up_and_restores(&setup);

    // A key others may read is refused, as libpq refuses it.
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
    let run = setup.backup(&["config", "check"]);
    assert_eq!(run.code, 3, "{}", run.all());
    assert!(run.stderr.contains("others may read it"), "{}", run.all());

    // No certificate: the server says no, and the message says why.
    setup.use_url(&base);
    let home = tempfile::tempdir().unwrap();
    let run = setup.backup_with(
        &["run", "nightly"],
        &[("HOME", home.path().to_str().unwrap())],
    );
    assert_eq!(run.code, 4, "{}", run.all());
    assert!(run.stderr.contains("certificate"), "{}", run.all());
}
