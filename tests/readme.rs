//! The README's shell examples, run as they are against a fresh node, so
//! they cannot rot.
//!
//! The convention (also stated in the README's "Using the API"):
//! * Every fenced `sh` or `bash` block from the heading `## Using the API`
//!   to the end of the file runs, in order, in one bash session (variables
//!   carry over), in a temporary directory holding the node's `lucid.yml`
//!   and a small `photo.png`, with `lucid` on `PATH`.
//! * A block right after a line `<!-- not-tested: REASON -->` is skipped
//!   (long-running commands, root, other machines).
//! * The node is made as the README says: `lucid init`, whose last line is
//!   the root token, given to the examples as `$TOKEN`; it listens on a free
//!   loopback port, which replaces `127.0.0.1:7021` in the commands.
//! * Each command must exit 0. A comment starting with `# =>` (at the end of
//!   the command's last line, or on the line right below it, continued by
//!   the lines right below that start with `#` and two spaces) is what it
//!   answers: an optional HTTP status
//!   (the last curl's), then text. Without a status every curl in the
//!   command must get a status below 400. The text must appear in the
//!   output in substance: whitespace and the digits of numbers (versions and
//!   times differ from node to node) are not compared, and `...` stands for
//!   anything.

mod common;

use std::fmt::Write as _;
use std::fs;
use std::io::Write as _;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use common::*;

/// The heading from which on shell blocks are examples to run.
const FIRST_TESTED_HEADING: &str = "## Using the API";
/// The marker before a block that is not run, followed by the reason.
const NOT_TESTED: &str = "<!-- not-tested:";
/// The address the README's commands use; replaced by the node's.
const README_ADDRESS: &str = "127.0.0.1:7021";
/// Marks an expected answer in a comment.
const ANSWER: &str = "# =>";
/// The line the curl wrapper writes to stderr after each transfer.
const STATUS_LINE: &str = "@status ";
/// Upper bound for the whole run (each curl has its own, shorter one).
const RUN_TIMEOUT: Duration = Duration::from_secs(120);

/// What a command must answer, from its `# =>` comment.
#[derive(Debug, PartialEq)]
struct Answer {
    /// The HTTP status of the command's last curl, if given.
    status: Option<u16>,
    /// Text the output must contain, in substance; may be empty.
    text: String,
}

/// One command of a README block.
#[derive(Debug, PartialEq)]
struct Example {
    /// 1-based line of the README where the command starts.
    line: usize,
    command: String,
    answer: Option<Answer>,
}

/// The runnable shell blocks: (line of the first line inside the fence, lines).
fn runnable_blocks(readme: &str) -> Vec<(usize, Vec<&str>)> {
    let lines: Vec<&str> = readme.lines().collect();
    let start = lines
        .iter()
        .position(|line| *line == FIRST_TESTED_HEADING)
        .unwrap_or_else(|| panic!("the README has no heading {FIRST_TESTED_HEADING:?}"));
    let mut blocks = Vec::new();
    let mut skip_next = false;
    let mut i = start;
    while i < lines.len() {
        let line = lines[i];
        if let Some(reason) = line.trim().strip_prefix(NOT_TESTED) {
            let reason = reason.trim_end_matches("-->").trim();
            assert!(!reason.is_empty(), "README line {}: give a reason", i + 1);
            skip_next = true;
        } else if let Some(fence) = line.strip_prefix("```") {
            let end = i
                + 1
                + lines[i + 1..]
                    .iter()
                    .position(|l| l.starts_with("```"))
                    .unwrap_or_else(|| panic!("README line {}: unclosed block", i + 1));
            if matches!(fence, "sh" | "bash") && !skip_next {
                blocks.push((i + 2, lines[i + 1..end].to_vec()));
            }
            skip_next = false;
            i = end;
        } else if !line.trim().is_empty() && skip_next && !line.starts_with("<!--") {
            panic!(
                "README line {}: {NOT_TESTED} must come right before a block",
                i + 1
            );
        }
        i += 1;
    }
    blocks
}

/// Whether bash can parse `text` as complete commands (no open quote,
/// bracket or line continuation).
fn is_complete(text: &str) -> bool {
    if text.trim_end().ends_with('\\') {
        return false;
    }
    let mut bash = Command::new("bash")
        .arg("-n")
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("run bash -n");
    bash.stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    bash.wait().unwrap().success()
}

/// Parses the text after `# =>`: an optional status, then the output.
fn parse_answer(text: &str) -> Answer {
    let text = text.trim();
    let (first, rest) = text.split_once(char::is_whitespace).unwrap_or((text, ""));
    match first.parse::<u16>() {
        Ok(status) if first.len() == 3 => Answer {
            status: Some(status),
            text: rest.trim().to_string(),
        },
        _ => Answer {
            status: None,
            text: text.to_string(),
        },
    }
}

/// The rest of an answer continued on `line`: a comment indented further
/// than a description (`#` and at least two spaces).
fn continued_answer(line: &str) -> Option<&str> {
    line.trim_start().strip_prefix("#  ")
}

/// Splits a block into commands with their expected answers.
fn examples(first_line: usize, block: &[&str]) -> Vec<Example> {
    let mut examples = Vec::new();
    let mut i = 0;
    while i < block.len() {
        let line = block[i].trim_start();
        if line.is_empty() || line.starts_with('#') {
            i += 1;
            continue;
        }
        let start = i;
        let mut command = block[i].to_string();
        while !is_complete(&command) {
            i += 1;
            assert!(
                i < block.len(),
                "README line {}: the command never ends",
                first_line + start
            );
            command.push('\n');
            command.push_str(block[i]);
        }
        // The answer: `# =>` ending the last line, or on the next line;
        // continued by the comment lines right below.
        let last = block[i];
        let last_starts = command.len() - last.len();
        let mut answer_text = last
            .match_indices(ANSWER)
            .find(|(at, _)| is_complete(&command[..last_starts + at]))
            .map(|(at, _)| last[at + ANSWER.len()..].to_string());
        if answer_text.is_none() {
            if let Some(next) = block.get(i + 1).and_then(|l| l.trim().strip_prefix(ANSWER)) {
                answer_text = Some(next.to_string());
                i += 1;
            }
        }
        if let Some(text) = answer_text.as_mut() {
            while let Some(more) = block.get(i + 1).and_then(|l| continued_answer(l)) {
                text.push('\n');
                text.push_str(more);
                i += 1;
            }
        }
        examples.push(Example {
            line: first_line + start,
            command,
            answer: answer_text.as_deref().map(parse_answer),
        });
        i += 1;
    }
    examples
}

/// The text as compared: no whitespace, every number's digits as one `0`.
fn substance(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars().filter(|c| !c.is_whitespace()) {
        if c.is_ascii_digit() {
            // Every digit is written as `0`, so a `0` before it means a number.
            if !out.ends_with('0') {
                out.push('0');
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// Whether `output` holds every `...`-separated part of `expected`, in order.
fn matches_in_substance(expected: &str, output: &str) -> bool {
    let output = substance(output);
    let mut from = 0;
    for part in expected.split("...").map(substance) {
        match output[from..].find(&part) {
            Some(at) => from += at + part.len(),
            None => return false,
        }
    }
    true
}

/// The bash script running every example, each one's stdout, stderr and
/// exit status going to files in `results` named by its index.
fn script(examples: &[Example], port: u16, results: &Path) -> String {
    let mut script = String::from(
        "# Every curl reports its HTTP status on stderr and gives up after 10 s.\n\
         curl() { command curl -sS --max-time 10 -w '%{stderr}\\n@status %{http_code}\\n' \"$@\"; }\n",
    );
    for (index, example) in examples.iter().enumerate() {
        let command = example
            .command
            .replace(README_ADDRESS, &format!("127.0.0.1:{port}"));
        let path = |ext: &str| results.join(format!("{index}.{ext}")).display().to_string();
        writeln!(
            script,
            "{{\n{command}\n}} >'{}' 2>'{}' </dev/null\necho $? >'{}'",
            path("out"),
            path("err"),
            path("rc")
        )
        .unwrap();
    }
    script
}

/// Runs `script` with bash in `dir`, in a process group of its own that
/// is killed after [`RUN_TIMEOUT`] (with whatever an example left running).
/// Returns whether it finished in time.
fn run_bash(script: &str, dir: &Path, token: &str) -> bool {
    let bin_dir = lucid_bin().parent().unwrap().to_path_buf();
    let path = format!("{}:{}", bin_dir.display(), std::env::var("PATH").unwrap());
    let mut bash = Command::new("bash")
        .arg("-c")
        .arg(script)
        .current_dir(dir)
        .env("PATH", path)
        .env("TOKEN", token)
        .stdin(Stdio::null())
        .process_group(0)
        .spawn()
        .expect("run bash");
    let deadline = Instant::now() + RUN_TIMEOUT;
    while bash.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let group = format!("-{}", bash.id());
            let _ = Command::new("kill").args(["-KILL", "--", &group]).status();
            let _ = bash.wait();
            return false;
        }
        thread::sleep(Duration::from_millis(20));
    }
    true
}

/// What is wrong with one example's run, if anything.
fn check(example: &Example, results: &Path, index: usize) -> Option<String> {
    let read = |ext: &str| fs::read_to_string(results.join(format!("{index}.{ext}")));
    let Ok(rc) = read("rc") else {
        return Some("did not finish, or did not run (the session ended before it)".into());
    };
    let stdout = read("out").unwrap_or_default();
    let stderr = read("err").unwrap_or_default();
    let statuses: Vec<u16> = stderr
        .lines()
        .filter_map(|line| line.strip_prefix(STATUS_LINE)?.parse().ok())
        .collect();
    let stderr: String = stderr
        .lines()
        .filter(|line| !line.starts_with(STATUS_LINE) && !line.is_empty())
        .collect::<Vec<_>>()
        .join("\n");
    let show = format!("\n  stdout: {stdout}\n  stderr: {stderr}\n  HTTP statuses: {statuses:?}");
    if rc.trim() != "0" {
        return Some(format!("exited {}{show}", rc.trim()));
    }
    let answer = example.answer.as_ref();
    match answer.and_then(|a| a.status) {
        Some(status) if statuses.last() != Some(&status) => {
            return Some(format!("expected HTTP {status}{show}"));
        }
        None if statuses.iter().any(|&s| s >= 400) => {
            return Some(format!(
                "an HTTP error, and no `{ANSWER} STATUS` says so{show}"
            ));
        }
        _ => {}
    }
    match answer {
        Some(answer) if !matches_in_substance(&answer.text, &stdout) => Some(format!(
            "the output does not match `{ANSWER} {}`{show}",
            answer.text
        )),
        _ => None,
    }
}

/// Makes a node as the README says (`lucid init`, the token on the last
/// line), on a free port; returns it with its port and the token.
fn fresh_node(dir: &Path) -> (Server, u16, String) {
    let init = run_lucid(&["init"], dir);
    assert!(init.status.success(), "lucid init: {init:?}");
    let stdout = String::from_utf8(init.stdout).unwrap();
    let token = stdout
        .lines()
        .last()
        .expect("init prints a token")
        .to_string();
    let config_path = dir.join("lucid.yml");
    let config = fs::read_to_string(&config_path).unwrap();
    // A port named in the config (not 0), so that commands which read the
    // config to find the node (`lucid compact` with a token) reach it.
    let port = free_port();
    let on_free_port = config.replacen("\n  port: 7021\n", &format!("\n  port: {port}\n"), 1);
    assert_ne!(
        config, on_free_port,
        "the config of `lucid init` names port 7021"
    );
    fs::write(&config_path, on_free_port).unwrap();
    let server = Server::spawn(&["server"], Some(dir));
    let port = server
        .wait_listening()
        .unwrap_or_else(|| panic!("the node did not start:\n{}", server.logs()));
    (server, port, token)
}

#[test]
fn the_readme_examples_run_as_written() {
    let readme = fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md"))
        .expect("read README.md");
    let examples: Vec<Example> = runnable_blocks(&readme)
        .iter()
        .flat_map(|(line, block)| examples(*line, block))
        .collect();
    assert!(
        examples.len() >= 30,
        "only {} runnable commands found in the README",
        examples.len()
    );
    let dir = tempfile::tempdir().unwrap();
    // The one input file the examples assume: a PNG signature and some bytes.
    let photo: Vec<u8> = b"\x89PNG\r\n\x1a\n"
        .iter()
        .copied()
        .chain(0..=255)
        .collect();
    fs::write(dir.path().join("photo.png"), photo).unwrap();
    let (mut server, port, token) = fresh_node(dir.path());
    let results = tempfile::tempdir().unwrap();
    let finished = run_bash(&script(&examples, port, results.path()), dir.path(), &token);
    server.terminate();
    let failures: Vec<String> = examples
        .iter()
        .enumerate()
        .filter_map(|(index, example)| {
            check(example, results.path(), index)
                .map(|why| format!("README line {}: {}\n  {why}", example.line, example.command))
        })
        .collect();
    assert!(
        failures.is_empty() && finished,
        "{} of {} README examples failed{}:\n\n{}",
        failures.len(),
        examples.len(),
        if finished {
            String::new()
        } else {
            format!(" (stopped after {RUN_TIMEOUT:?})")
        },
        failures.join("\n\n")
    );
}

#[test]
fn commands_and_answers_are_split_as_documented() {
    let block = [
        "# a description, not an answer",
        "X=1",
        "curl -X PUT \\",
        "  -d '{\"a\":",
        "  1}' url   # => 201 {\"message\": ...created.\"}",
        "",
        "curl url",
        "# => {\"keys\":[",
        "#    \"k\"]}",
        "# a description of the next command",
        "echo 'a # => b'",
    ];
    let found = examples(10, &block);
    let commands: Vec<(usize, &str)> = found.iter().map(|e| (e.line, e.command.as_str())).collect();
    assert_eq!(
        commands,
        [
            (11, "X=1"),
            (
                12,
                "curl -X PUT \\\n  -d '{\"a\":\n  1}' url   # => 201 {\"message\": ...created.\"}"
            ),
            (16, "curl url"),
            (20, "echo 'a # => b'"),
        ]
    );
    assert_eq!(found[0].answer, None);
    assert_eq!(
        found[1].answer,
        Some(Answer {
            status: Some(201),
            text: "{\"message\": ...created.\"}".into()
        })
    );
    assert_eq!(found[2].answer.as_ref().unwrap().status, None);
    assert!(matches_in_substance(
        &found[2].answer.as_ref().unwrap().text,
        "{\"keys\": [\"k\"]}"
    ));
    assert!(matches_in_substance(
        "{\"version\":41, ...\"x\"}",
        "{\"version\": 7, \"y\": 1, \"x\"}"
    ));
    assert!(!matches_in_substance("{\"x\":1}", "{\"y\":1}"));
    assert!(!matches_in_substance("b ... a", "a b"));
}
