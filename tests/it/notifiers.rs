//! Every notifier against a real receiver on 127.0.0.1: mail through an
//! SMTP server that wants a password (aiosmtpd, tests/it/receivers/smtp.py),
//! a Microsoft Teams Adaptive Card, a Discord message and healthchecks-style
//! pings, in order, each following only the jobs it names.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};

use serde_json::Value;

use crate::common::Setup;

/// One request a receiver took.
#[derive(Debug, Clone)]
struct Request {
    path: String,
    content_type: String,
    body: String,
}

/// An HTTP receiver that answers 200 and keeps every request, in order.
fn receiver() -> (String, Arc<Mutex<Vec<Request>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let kept = Arc::new(Mutex::new(Vec::new()));
    let into = kept.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let mut reader = BufReader::new(stream);
            let mut first = String::new();
            if reader.read_line(&mut first).unwrap_or(0) == 0 {
                continue;
            }
            let path = first.split_whitespace().nth(1).unwrap_or("").to_owned();
            let (mut length, mut content_type) = (0, String::new());
            loop {
                let mut line = String::new();
                if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                    break;
                }
                let lower = line.to_ascii_lowercase();
                if let Some(v) = lower.strip_prefix("content-length:") {
                    length = v.trim().parse().unwrap_or(0);
                }
                if let Some(v) = lower.strip_prefix("content-type:") {
                    content_type = v.trim().to_owned();
                }
            }
            let mut body = vec![0; length];
            let _ = reader.read_exact(&mut body);
            into.lock().unwrap().push(Request {
                path,
                content_type,
                body: String::from_utf8_lossy(&body).into_owned(),
            });
            let _ = reader
                .get_mut()
                .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n");
        }
    });
    (base, kept)
}

/// aiosmtpd on a free port, writing what it takes into `maildir`.
struct Smtp {
    child: Child,
    port: u16,
}

impl Smtp {
    fn start(maildir: &Path, user: &str, password: &str) -> Smtp {
        let python = std::env::var("BACKUP_TEST_SMTPD_PYTHON").expect(
            "BACKUP_TEST_SMTPD_PYTHON names a Python with aiosmtpd: run the tests through \
             scripts/test (its ensure_aiosmtpd)",
        );
        std::fs::create_dir_all(maildir).unwrap();
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/it/receivers/smtp.py");
        let mut child = Command::new(python)
            .arg(script)
            .arg(port.to_string())
            .arg(maildir)
            .args([user, password])
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start the SMTP receiver");
        let mut ready = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut ready)
            .unwrap();
        assert_eq!(ready.trim(), "ready", "the SMTP receiver did not start");
        Smtp { child, port }
    }
}

impl Drop for Smtp {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The mails in `maildir`, in the order they came.
fn mails(maildir: &Path) -> Vec<String> {
    let mut names: Vec<_> = std::fs::read_dir(maildir)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "eml"))
        .collect();
    names.sort();
    names
        .iter()
        .map(|p| std::fs::read_to_string(p).unwrap())
        .collect()
}

#[test]
fn mail_teams_discord_and_pings_reach_real_receivers_in_order() {
    let setup = Setup::new("", "");
    let maildir = setup.work.path().join("mail");
    let smtp = Smtp::start(&maildir, "backup-sender", "mail-pw-71c2");
    let (base, requests) = receiver();
    let mut config = std::fs::read_to_string(&setup.config).unwrap();
    config.push_str(&format!(
        "\n[notifications.mail]\ntype = \"email\"\nsmtp = \"smtp://127.0.0.1:{}\"\n\
         from = \"backup@example.com\"\nto = [\"ops@example.com\", \"dba@example.com\"]\n\
         username_env = \"SMTP_USER\"\npassword_env = \"SMTP_PASSWORD\"\n\
         [notifications.teams]\ntype = \"teams\"\nurl_env = \"TEAMS_URL\"\n\
         [notifications.discord]\ntype = \"discord\"\nurl_env = \"DISCORD_URL\"\n\
         [notifications.check]\ntype = \"ping\"\nurl_env = \"PING_URL\"\njobs = [\"nightly\"]\n\
         [notifications.elsewhere]\ntype = \"ping\"\nurl_env = \"OTHER_PING_URL\"\n\
         jobs = [\"tidy\"]\n\
         [jobs.tidy]\ntype = \"maintenance\"\ndatabase = \"app\"\ntasks = [\"analyze\"]\n",
        smtp.port
    ));
    let good = config.clone();
    let (teams, discord) = (format!("{base}/teams"), format!("{base}/discord"));
    let (ping, other) = (format!("{base}/ping/abc-123/"), format!("{base}/other"));
    let env = [
        ("SMTP_USER", "backup-sender"),
        ("SMTP_PASSWORD", "mail-pw-71c2"),
        ("TEAMS_URL", teams.as_str()),
        ("DISCORD_URL", discord.as_str()),
        ("PING_URL", ping.as_str()),
        ("OTHER_PING_URL", other.as_str()),
    ];
    // A failure (the database is not there), its recovery, then a routine success.
    std::fs::write(&setup.config, config.replace("/app\"", "/missing\"")).unwrap();
    let run = setup.backup_with(&["run", "nightly"], &env);
    assert_eq!(run.code, 4, "{}", run.all());
    std::fs::write(&setup.config, &good).unwrap();
    for _ in 0..2 {
        let run = setup.backup_with(&["run", "nightly"], &env);
        assert!(run.ok(), "{}", run.all());
    }

    // A command on the job is not its run: no ping for it.
    let run = setup.backup_with(&["verify", "--job", "nightly"], &env);
    assert!(run.ok(), "{}", run.all());

    let requests = requests.lock().unwrap().clone();
    let on = |prefix: &str| -> Vec<Request> {
        requests
            .iter()
            .filter(|r| r.path.starts_with(prefix))
            .cloned()
            .collect()
    };
    // The check hears every end, and the start of every run that began its
    // work (the failed one stopped before: no database to lock), in order;
    // the other job's check hears nothing of this one.
    let pings: Vec<String> = on("/ping/").into_iter().map(|r| r.path).collect();
    assert_eq!(
        pings,
        [
            "/ping/abc-123/fail",
            "/ping/abc-123/start",
            "/ping/abc-123/",
            "/ping/abc-123/start",
            "/ping/abc-123/",
        ],
        "{requests:#?}"
    );
    let fail = &on("/ping/")[0];
    assert!(fail.content_type.starts_with("text/plain"), "{fail:?}");
    assert!(fail.body.contains("job nightly failed"), "{fail:?}");
    assert!(on("/other").is_empty(), "{requests:#?}");

    // Teams: an Adaptive Card for the failure and one for the recovery.
    let cards: Vec<Value> = on("/teams")
        .iter()
        .map(|r| serde_json::from_str(&r.body).unwrap())
        .collect();
    assert_eq!(cards.len(), 2, "{cards:#?}");
    let card = &cards[0]["attachments"][0];
    assert_eq!(
        card["contentType"],
        "application/vnd.microsoft.card.adaptive"
    );
    assert_eq!(card["content"]["type"], "AdaptiveCard");
    let body = &card["content"]["body"];
    assert!(
        body[0]["text"]
            .as_str()
            .unwrap()
            .contains("job nightly failed"),
        "{card:#}"
    );
    assert_eq!(body[0]["color"], "Attention");
    let facts = body[1]["facts"].as_array().unwrap();
    assert!(
        facts
            .iter()
            .any(|f| f["title"] == "Error" && f["value"].as_str().unwrap().contains("missing")),
        "{card:#}"
    );
    assert!(
        cards[1]["attachments"][0]["content"]["body"][0]["text"]
            .as_str()
            .unwrap()
            .contains("recovered")
    );

    // Discord: the same two, mentions never parsed.
    let messages: Vec<Value> = on("/discord")
        .iter()
        .map(|r| serde_json::from_str(&r.body).unwrap())
        .collect();
    assert_eq!(messages.len(), 2, "{messages:#?}");
    assert!(
        messages[0]["content"]
            .as_str()
            .unwrap()
            .contains("job nightly failed")
    );
    assert_eq!(
        messages[0]["allowed_mentions"]["parse"],
        serde_json::json!([])
    );
    assert!(
        messages[1]["content"]
            .as_str()
            .unwrap()
            .contains("recovered")
    );

    // Mail: two, after AUTH, to both addresses, in plain text with the facts.
    let mails = mails(&maildir);
    assert_eq!(mails.len(), 2, "{mails:#?}");
    let first = &mails[0];
    assert!(first.contains("X-Test-Auth: backup-sender\r\n"), "{first}");
    assert!(
        first.contains("X-Test-Mail-From: backup@example.com\r\n"),
        "{first}"
    );
    assert!(
        first.contains("X-Test-Rcpt-To: ops@example.com,dba@example.com\r\n"),
        "{first}"
    );
    assert!(
        first.contains("Subject: backup: job nightly failed"),
        "{first}"
    );
    assert!(first.contains("text/plain"), "{first}");
    assert!(first.contains("Error: "), "{first}");
    assert!(mails[1].contains("recovered"), "{}", mails[1]);

    // A wrong password: the mail is not sent, the run still succeeds, and
    // the log says why without the password.
    let mut wrong = env;
    wrong[1] = ("SMTP_PASSWORD", "not-the-password");
    std::fs::write(&setup.config, good.replace("/app\"", "/missing\"")).unwrap();
    let run = setup.backup_with(&["run", "nightly"], &wrong);
    assert_eq!(run.code, 4, "{}", run.all());
    assert!(
        run.stderr.contains("notification mail: failure not sent"),
        "{}",
        run.all()
    );
    assert!(!run.all().contains("not-the-password"), "{}", run.all());
    assert_eq!(self::mails(&maildir).len(), 2);
}
