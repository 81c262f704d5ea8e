//! The differential test: generated commands go through the real broker and processor, and
//! every reply is compared with what the real Django REST framework answers.
//!
//! `tests/drf_oracle/generate.py` (run in the virtualenv `scripts/drf-venv.sh` makes, with the
//! pinned Django and DRF) writes the cases of one seed with the oracle's answers; this test
//! produces them all at once (each with a `request-id` header, and its case number as
//! `correlation-id`), collects the replies, and compares status, version and body as JSON
//! (object key order and number spelling included; `created` excepted, and `expires` where the
//! model default set it, which is checked against the service's clock instead).
//!
//! `DIFF_CASES` (default 20000) and `DIFF_SEED` (default a fixed seed; `random` for a new one)
//! choose the run. A failure prints every disagreeing case (up to 40 in full), both answers,
//! the rule the oracle applied if any, and the seed; all of them are also written to
//! `target/differential/disagreements-<seed>.jsonl` (and the cases are kept beside them).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::support::TestApp;
use event_updater::domain::reply::header;
use event_updater::drf::pyjson;
use futures::StreamExt;
use rdkafka::message::{Header, Headers, Message, OwnedHeaders};
use rdkafka::producer::FutureRecord;
use rdkafka::util::Timeout;
use serde_json::Value;

const DEFAULT_CASES: usize = 20_000;
const DEFAULT_SEED: u64 = 20_261_130;

/// One generated case with the oracle's answer (a line of the generator's output).
struct Case {
    i: usize,
    key: String,
    value: Vec<u8>,
    request_id_header: String,
    status: u64,
    body: String,
    version: Option<i64>,
    rule: Option<String>,
    default_expires: bool,
    classes: Vec<String>,
}

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// The virtualenv's Python, made by `scripts/drf-venv.sh` when missing.
fn oracle_python() -> PathBuf {
    let python = root().join("target/drf-venv/bin/python");
    if !python.exists() {
        let status = std::process::Command::new(root().join("scripts/drf-venv.sh"))
            .status()
            .expect("run scripts/drf-venv.sh");
        assert!(status.success(), "scripts/drf-venv.sh failed");
    }
    python
}

fn hex_decode(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).expect("hex"))
        .collect()
}

fn generate(seed: u64, cases: usize) -> Vec<Case> {
    let dir = root().join("target/differential");
    std::fs::create_dir_all(&dir).expect("target/differential");
    let out = dir.join(format!("cases-{seed}.jsonl"));
    let status = std::process::Command::new(oracle_python())
        .current_dir(root().join("tests/drf_oracle"))
        .args(["generate.py", "--seed", &seed.to_string()])
        .args(["--cases", &cases.to_string()])
        .args(["--max-depth", &pyjson::MAX_DEPTH.to_string()])
        .arg("--out")
        .arg(&out)
        .status()
        .expect("run the oracle");
    assert!(status.success(), "the oracle failed (seed {seed})");
    let text = std::fs::read_to_string(&out).expect("oracle output");
    text.lines()
        .map(|line| {
            let v: Value = serde_json::from_str(line).expect("oracle line");
            let s = |k: &str| v[k].as_str().expect(k).to_owned();
            Case {
                i: v["i"].as_u64().expect("i") as usize,
                key: s("key"),
                value: hex_decode(&s("value")),
                request_id_header: s("request_id_header"),
                status: v["status"].as_u64().expect("status"),
                body: s("body"),
                version: v["version"].as_i64(),
                rule: v["rule"].as_str().map(str::to_owned),
                default_expires: v["default_expires"].as_bool().unwrap_or(false),
                classes: v["classes"]
                    .as_array()
                    .map(|a| {
                        a.iter()
                            .filter_map(|c| c.as_str().map(str::to_owned))
                            .collect()
                    })
                    .unwrap_or_default(),
            }
        })
        .collect()
}

/// Compares one reply with the oracle's answer; `Err` says what differs.
fn compare(
    case: &Case,
    reply: &[u8],
    produced_at: chrono::DateTime<chrono::Utc>,
) -> Result<(), String> {
    let got = pyjson::parse(reply).map_err(|e| format!("the reply is not JSON: {e}"))?;
    let mut want = pyjson::parse_str(&case.body).map_err(|e| format!("oracle body: {e}"))?;
    let status = got["status"].as_u64();
    if status != Some(case.status) {
        return Err(format!("status {status:?}, expected {}", case.status));
    }
    let version = got.get("version").and_then(Value::as_i64);
    if version != case.version {
        return Err(format!("version {version:?}, expected {:?}", case.version));
    }
    let mut body = got.get("body").cloned().unwrap_or(Value::Null);
    if matches!(case.status, 200 | 201) {
        for b in [&mut body, &mut want] {
            if let Value::Object(m) = b {
                m.shift_remove("created");
            }
        }
        if case.default_expires {
            let expires = body
                .get("expires")
                .and_then(Value::as_str)
                .unwrap_or_default();
            let at = chrono::DateTime::parse_from_rfc3339(expires)
                .map_err(|e| format!("expires {expires:?}: {e}"))?;
            let default = produced_at + chrono::Duration::days(365);
            let off = (at.with_timezone(&chrono::Utc) - default)
                .num_seconds()
                .abs();
            if off > 3600 {
                return Err(format!(
                    "default expires {expires} is not 365 days after now"
                ));
            }
            for b in [&mut body, &mut want] {
                if let Value::Object(m) = b {
                    m.shift_remove("expires");
                }
            }
        }
    }
    let (got_text, want_text) = (to_text(&body), to_text(&want));
    if got_text != want_text {
        return Err("bodies differ".to_owned());
    }
    Ok(())
}

/// Serialised with object keys in order and numbers as spelled: the comparison's form.
fn to_text(v: &Value) -> String {
    serde_json::to_string(v).expect("serialise")
}

fn shown(bytes: &[u8]) -> String {
    match std::str::from_utf8(bytes) {
        Ok(s) if s.len() <= 3000 => s.to_owned(),
        Ok(s) => format!(
            "{}… ({} bytes)",
            &s[..s.char_indices().nth(3000).map_or(s.len(), |c| c.0)],
            s.len()
        ),
        Err(_) => format!("{:?}", String::from_utf8_lossy(bytes)),
    }
}

#[test]
fn every_reply_is_what_django_rest_framework_answers() {
    // Deep values (up to pyjson::MAX_DEPTH levels) are parsed, compared and dropped here.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_stack_size(256 << 20)
        .enable_all()
        .build()
        .expect("runtime");
    // On a worker thread (block_on would poll `run` on this test thread and its small stack).
    if let Err(e) = runtime.block_on(runtime.spawn(run())) {
        std::panic::resume_unwind(e.into_panic());
    }
}

async fn run() {
    let cases_n = std::env::var("DIFF_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(DEFAULT_CASES);
    let seed = match std::env::var("DIFF_SEED").ok().as_deref() {
        None | Some("") => DEFAULT_SEED,
        Some("random") => uuid::Uuid::new_v4().as_u64_pair().0 % 1_000_000_000,
        Some(s) => s.parse().expect("DIFF_SEED: a number or `random`"),
    };
    let started = Instant::now();
    let cases = generate(seed, cases_n);
    let oracle_time = started.elapsed();
    assert_eq!(cases.len(), cases_n, "the oracle answered every case");

    let app = TestApp::spawn_with(|c| c.max_batch = 500).await;
    let reader = app.new_reader(&app.cfg.reply_topic);
    let collected = std::sync::Arc::new(std::sync::Mutex::new(HashMap::<usize, Vec<u8>>::new()));
    let sink = collected.clone();
    let collector = tokio::spawn(async move {
        let mut stream = reader.stream();
        while let Some(m) = stream.next().await {
            let Ok(m) = m else { continue };
            let case = m.headers().and_then(|h| {
                h.iter()
                    .find(|h| h.key == header::CORRELATION_ID)
                    .and_then(|h| std::str::from_utf8(h.value?).ok()?.parse::<usize>().ok())
            });
            if let Some(i) = case {
                let payload = m.payload().unwrap_or_default().to_vec();
                sink.lock().expect("lock").insert(i, payload);
            }
        }
    });

    let produce_started = Instant::now();
    let produced_at = chrono::Utc::now();
    for chunk in cases.chunks(1000) {
        let sends = chunk.iter().map(|c| {
            let correlation = c.i.to_string();
            let headers = OwnedHeaders::new()
                .insert(Header {
                    key: header::AUTHORIZATION,
                    value: Some(app.authorization.as_bytes()),
                })
                .insert(Header {
                    key: header::REQUEST_ID,
                    value: Some(c.request_id_header.as_bytes()),
                })
                .insert(Header {
                    key: header::CORRELATION_ID,
                    value: Some(correlation.as_bytes()),
                });
            let record: FutureRecord<'_, str, [u8]> = FutureRecord::to(&app.cfg.command_topic)
                .key(c.key.as_str())
                .payload(c.value.as_slice())
                .headers(headers);
            app.producer
                .send(record, Timeout::After(Duration::from_secs(120)))
        });
        for r in futures::future::join_all(sends).await {
            r.map_err(|(e, _)| e).expect("command delivered");
        }
    }
    let deadline = Instant::now() + Duration::from_secs(120 + cases_n as u64 / 50);
    loop {
        let n = collected.lock().expect("lock").len();
        if n >= cases.len() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{} of {} commands have no reply (seed {seed})",
            cases.len() - n,
            cases.len()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let processing_time = produce_started.elapsed();
    collector.abort();
    let _ = collector.await;
    let replies = std::mem::take(&mut *collected.lock().expect("lock"));

    let mut failures = Vec::new();
    let mut by_class: HashMap<String, usize> = HashMap::new();
    let mut by_rule: HashMap<String, usize> = HashMap::new();
    for case in &cases {
        *by_rule
            .entry(case.rule.clone().unwrap_or_else(|| "DRF".into()))
            .or_default() += 1;
        let reply = &replies[&case.i];
        if let Err(why) = compare(case, reply, produced_at) {
            for c in &case.classes {
                *by_class.entry(c.clone()).or_default() += 1;
            }
            failures.push((case, why, reply));
        }
    }
    let mut report = String::new();
    let log = root().join(format!("target/differential/disagreements-{seed}.jsonl"));
    let mut lines = String::new();
    for (n, (case, why, reply)) in failures.iter().enumerate() {
        if n < 40 {
            report.push_str(&format!(
                "\n--- case {} (seed {seed}; classes {:?}; rule {:?}): {why}\n  command: {}\n  \
                 expected: {} {}\n  got:      {}\n",
                case.i,
                case.classes,
                case.rule,
                shown(&case.value),
                case.status,
                shown(case.body.as_bytes()),
                shown(reply),
            ));
        }
        lines.push_str(
            &serde_json::json!({
                "i": case.i, "seed": seed, "why": why, "classes": case.classes,
                "rule": case.rule, "command": String::from_utf8_lossy(&case.value),
                "expected_status": case.status, "expected_body": case.body,
                "reply": String::from_utf8_lossy(reply),
            })
            .to_string(),
        );
        lines.push('\n');
    }
    let _ = std::fs::write(&log, lines);
    let mut rules: Vec<_> = by_rule.into_iter().collect();
    rules.sort();
    println!(
        "differential: seed {seed}, {} cases, {} disagreements; oracle {:.1}s, broker and \
         processor {:.1}s; answers by rule {rules:?}",
        cases.len(),
        failures.len(),
        oracle_time.as_secs_f64(),
        processing_time.as_secs_f64(),
    );
    app.finish().await;
    if failures.is_empty() {
        // The cases of a passing run are reproducible from the seed; they take room.
        let _ =
            std::fs::remove_file(root().join(format!("target/differential/cases-{seed}.jsonl")));
        let _ = std::fs::remove_file(&log);
    }
    assert!(
        failures.is_empty(),
        "{} of {} cases disagree with DRF (seed {seed}; by class {by_class:?}; all in {}):{report}",
        failures.len(),
        cases.len(),
        log.display()
    );
}
