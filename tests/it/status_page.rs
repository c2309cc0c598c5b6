//! The status page end to end: a daemon with real run records (backups of a
//! throwaway cluster, and a job that fails) serves it at `/`, `backup report
//! --html` writes it, and headless Chromium renders both with every request
//! leaving 127.0.0.1 refused. Also the bearer token a daemon on an address
//! other than loopback asks for.
//!
//! Chromium is installed by scripts/test (`ensure_chromium`); these tests
//! fail without it rather than pass unseen. With BACKUP_TEST_SCREENSHOT_DIR
//! set, the screenshot is kept there as `status-page.png` (the README's is
//! made so).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::{self, Setup};

/// Chromium's program; a missing one fails the test.
fn chromium() -> PathBuf {
    for name in ["chromium", "chromium-browser"] {
        for dir in std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default()) {
            let path = dir.join(name);
            if path.is_file() {
                return path;
            }
        }
    }
    panic!("chromium is not installed: scripts/test installs it (apt-get install chromium)");
}

/// Runs headless Chromium on `url` with `args`, every host but 127.0.0.1
/// unresolvable: a page that fetched anything from elsewhere would show it
/// broken, and the checks on the HTML say it never asks.
fn chromium_on(url: &str, args: &[&str], profile: &Path) -> String {
    let output = Command::new(chromium())
        .args([
            "--headless",
            "--disable-gpu",
            "--no-sandbox",
            "--no-first-run",
            "--disable-extensions",
            "--disable-background-networking",
            "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .args(args)
        .arg(url)
        .stdin(Stdio::null())
        .output()
        .expect("run chromium");
    assert!(
        output.status.success(),
        "chromium failed on {url}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// What a self-contained page must not hold: a script from anywhere, a
/// style sheet or anything else linked, an address other than the SVG
/// namespace's (a name, never fetched).
fn assert_self_contained(html: &str) {
    let lower = html.to_ascii_lowercase();
    assert!(!lower.contains("<script"), "a script on the page");
    assert!(!lower.contains("<link"), "a link element on the page");
    assert!(!lower.contains("@import") && !lower.contains("url("));
    assert!(!lower.contains("src="), "something loaded by src=");
    let urls = lower.matches("http://").count() + lower.matches("https://").count();
    let namespaces = lower
        .matches("xmlns=\"http://www.w3.org/2000/svg\"")
        .count();
    assert_eq!(urls, namespaces, "an address other than the SVG namespace");
}

/// The section of job `name`, up to the next one.
fn section<'a>(html: &'a str, name: &str) -> &'a str {
    let start = html
        .find(&format!("data-job=\"{name}\""))
        .unwrap_or_else(|| panic!("no section of job {name}"));
    let rest = &html[start..];
    &rest[..rest.find("</section>").unwrap_or(rest.len())]
}

/// The points of chart `id` (`size-nightly`) in series `series`.
fn points(html: &str, id: &str, series: &str) -> usize {
    let start = html
        .find(&format!("id=\"{id}\""))
        .unwrap_or_else(|| panic!("no chart {id}"));
    let chart = &html[start..];
    let chart = &chart[..chart.find("</svg>").unwrap()];
    chart.matches(&format!("data-series=\"{series}\"")).count()
}

/// Three backups of `nightly`, and a job `broken` whose database is gone.
fn setup_with_history() -> Setup {
    let setup = Setup::new("", "schedule = \"0 3 * * *\"");
    setup.append_to_config(&format!(
        "[databases.gone]\nurl = \"{}\"\npassword_file = \"{}\"\n\n\
         [jobs.broken]\ntype = \"backup\"\ndatabase = \"gone\"\nstorages = [\"disk\"]\n\
         schedule = \"30 3 * * *\"\n",
        setup.cluster.url("no_such_database"),
        setup.cluster.password_file.display()
    ));
    for n in 0..3 {
        let run = setup.backup(&["run", "nightly"]);
        assert_eq!(run.code, 0, "backup {n}: {}", run.stderr);
    }
    let run = setup.backup(&["run", "broken"]);
    assert_ne!(run.code, 0, "the broken job failed");
    setup
}

fn keep_screenshot(png: &Path) {
    if let Some(dir) = std::env::var_os("BACKUP_TEST_SCREENSHOT_DIR") {
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::copy(png, Path::new(&dir).join("status-page.png")).unwrap();
    }
}

#[test]
fn the_daemon_serves_a_status_page_chromium_renders_with_the_failure_first() {
    let setup = setup_with_history();
    let log = setup.work.path().join("daemon.log");
    let (mut child, port) = common::start_daemon(&log, |listen| {
        let mut command = setup.command(&["daemon", "--listen", listen], &[]);
        command.env("BACKUP_LOG", "info").stdout(Stdio::null());
        command
    });

    let answer = common::http_get_with(port, "/", &[]).expect("GET /");
    assert_eq!(answer.status, 200, "{}", answer.body);
    assert_eq!(
        answer.header("content-type"),
        Some("text/html; charset=utf-8")
    );
    assert!(
        answer
            .header("content-security-policy")
            .is_some_and(|p| p.contains("default-src 'none'"))
    );
    let html = answer.body;
    assert_self_contained(&html);
    // On loopback no token is asked for.
    assert_eq!(common::http_get(port, "/metrics").unwrap().0, 200);

    let profile = setup.work.path().join("chromium");
    let url = format!("http://127.0.0.1:{port}/");
    let dom = chromium_on(&url, &["--dump-dom"], &profile);
    for page in [&html, &dom] {
        let broken = page.find("data-job=\"broken\"").expect("job broken");
        let nightly = page.find("data-job=\"nightly\"").expect("job nightly");
        assert!(broken < nightly, "the failed job comes first");
        let failed = section(page, "broken");
        assert!(failed.contains("data-standing=\"failing\""));
        assert!(failed.contains(">FAILED<"), "said in words: {failed}");
        assert!(failed.contains("no_such_database"), "{failed}");
        let good = section(page, "nightly");
        assert!(good.contains(">OK<"), "{good}");
        assert!(good.contains("Newest backup"));
        assert_eq!(points(page, "size-nightly", "stored"), 3, "one per backup");
        assert_eq!(points(page, "size-nightly", "raw"), 3);
        assert_eq!(points(page, "duration-nightly", "duration"), 3);
    }

    let png = setup.work.path().join("status-page.png");
    chromium_on(
        &url,
        &[
            &format!("--screenshot={}", png.display()),
            "--window-size=1280,2000",
            "--hide-scrollbars",
        ],
        &profile,
    );
    let image = std::fs::read(&png).expect("the screenshot");
    assert!(image.starts_with(b"\x89PNG\r\n\x1a\n"), "a PNG");
    assert!(image.len() > 10_000, "more than a blank page");
    keep_screenshot(&png);

    let _ = child.kill();
    let _ = child.wait();
}

#[test]
fn backup_report_html_writes_the_page_as_one_file() {
    let setup = setup_with_history();
    let file = setup.work.path().join("status.html");
    let run = setup.backup(&["report", "--html", file.to_str().unwrap()]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    let html = std::fs::read_to_string(&file).unwrap();
    assert_self_contained(&html);
    let profile = setup.work.path().join("chromium");
    let dom = chromium_on(
        &format!("file://{}", file.display()),
        &["--dump-dom"],
        &profile,
    );
    assert!(dom.find("data-job=\"broken\"").unwrap() < dom.find("data-job=\"nightly\"").unwrap());
    assert_eq!(points(&dom, "size-nightly", "stored"), 3);

    // --job: that job alone.
    let run = setup.backup(&[
        "report",
        "--html",
        file.to_str().unwrap(),
        "--job",
        "nightly",
    ]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    let html = std::fs::read_to_string(&file).unwrap();
    assert!(html.contains("data-job=\"nightly\"") && !html.contains("data-job=\"broken\""));
}

const TOKEN: &str = "status-page-test-token-0123456789";

#[test]
fn a_daemon_on_an_address_other_than_loopback_asks_for_a_token() {
    let setup = Setup::new("", "schedule = \"0 3 * * *\"");
    let run = setup.backup(&["run", "nightly"]);
    assert_eq!(run.code, 0, "{}", run.stderr);

    // Without token_env it does not start, and says what to do.
    let port = common::free_port();
    let mut refused = setup
        .command(&["daemon", "--listen", &format!("0.0.0.0:{port}")], &[])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let started = Instant::now();
    let status = loop {
        if let Some(status) = refused.try_wait().unwrap() {
            break status;
        }
        if started.elapsed() > Duration::from_secs(30) {
            let _ = refused.kill();
            panic!("the daemon started on 0.0.0.0 without a token");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut stderr = String::new();
    std::io::Read::read_to_string(refused.stderr.as_mut().unwrap(), &mut stderr).unwrap();
    assert_eq!(status.code(), Some(3), "a configuration error: {stderr}");
    assert!(stderr.contains("without a token"), "{stderr}");
    assert!(stderr.contains("token_env"), "the hint: {stderr}");

    setup.append_to_config("[daemon]\ntoken_env = \"BACKUP_TEST_DAEMON_TOKEN\"\n");
    let bearer = format!("Bearer {TOKEN}");
    let log = setup.work.path().join("daemon.log");
    let (mut child, port) =
        common::start_daemon_with(&log, &[("Authorization", &bearer)], |listen| {
            let listen = listen.replace("127.0.0.1", "0.0.0.0");
            let mut command = setup.command(
                &["daemon", "--listen", &listen],
                &[("BACKUP_TEST_DAEMON_TOKEN", TOKEN)],
            );
            command.stdout(Stdio::null());
            command
        });
    let status = |path: &str, headers: &[(&str, &str)]| {
        common::http_get_with(port, path, headers)
            .unwrap_or_else(|| panic!("GET {path}"))
            .status
    };
    for path in ["/", "/health", "/metrics"] {
        assert_eq!(status(path, &[]), 401, "{path} without the token");
        assert_eq!(
            status(path, &[("Authorization", "Bearer not-the-token-at-all")]),
            401,
            "{path} with a wrong token"
        );
        assert_eq!(
            status(path, &[("Authorization", &bearer)]),
            200,
            "{path} with the token"
        );
    }
    let denied = common::http_get_with(port, "/metrics", &[]).unwrap();
    assert_eq!(denied.header("www-authenticate"), Some("Bearer"));
    assert!(!denied.body.contains("backup_"), "nothing of the metrics");
    // The probes stay open: a kubelet has no token.
    assert_eq!(status("/health/live", &[]), 200);
    assert_eq!(status("/health/ready", &[]), 200);

    let _ = child.kill();
    let _ = child.wait();
}
