//! `kiln chat` in a real terminal (a pseudo-terminal this test drives as a user would): the
//! default model (qwen2.5-coder-0.5b, an instruct model, pulled on first use), `/help`, two turns
//! that share a history, Ctrl-C in the middle of a reply (the reply stops, the chat goes on),
//! another turn, the `--verbose` speed line after each reply (the second turn computing only its
//! new tokens: the first's KV cache is kept), and `/bye`; then the line history kept in
//! `$KILN_HOME/chat_history` recalled in a second session.
#![cfg(unix)]

use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A child process on a pseudo-terminal, and everything it has written.
struct Terminal {
    master: std::fs::File,
    child: Child,
    seen: Vec<u8>,
    /// Where the next `expect` starts looking.
    mark: usize,
}

impl Terminal {
    fn spawn(args: &[&str], kiln_home: &std::path::Path) -> Terminal {
        let (mut master, mut slave) = (-1, -1);
        let size = libc::winsize {
            ws_row: 40,
            ws_col: 200,
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        // SAFETY: openpty writes two descriptors, which are owned from here on.
        let rc = unsafe {
            libc::openpty(
                &mut master,
                &mut slave,
                std::ptr::null_mut(),
                std::ptr::null(),
                &size,
            )
        };
        assert_eq!(rc, 0, "openpty: {}", std::io::Error::last_os_error());
        // SAFETY: both were just opened and nothing else owns them.
        let (master, slave) =
            unsafe { (OwnedFd::from_raw_fd(master), OwnedFd::from_raw_fd(slave)) };
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_kiln"));
        cmd.args(args)
            .env("TERM", "xterm-256color")
            // A KILN_HOME of the test's own for the line history; the models stay where they are.
            .env("KILN_MODELS", kiln_pull::models_dir())
            .env("KILN_HOME", kiln_home)
            .stdin(Stdio::from(slave.try_clone().unwrap()))
            .stdout(Stdio::from(slave.try_clone().unwrap()))
            .stderr(Stdio::from(slave));
        // SAFETY: only async-signal-safe calls between fork and exec. The child leads a new
        // session whose controlling terminal is the pty, so Ctrl-C there is its SIGINT.
        unsafe {
            cmd.pre_exec(|| {
                if libc::setsid() < 0 || libc::ioctl(0, libc::TIOCSCTTY as _, 0) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = cmd.spawn().expect("start kiln chat");
        drop(cmd);
        Terminal {
            master: std::fs::File::from(master),
            child,
            seen: Vec::new(),
            mark: 0,
        }
    }

    fn transcript(&self) -> String {
        String::from_utf8_lossy(&self.seen).into_owned()
    }

    /// Reads until `what` appears after the mark (then the mark moves past it), or panics with
    /// the transcript after `timeout`.
    fn expect(&mut self, what: &str, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            let hay = String::from_utf8_lossy(&self.seen[self.mark..]).into_owned();
            if let Some(i) = hay.find(what) {
                let upto = self.mark + hay[..i + what.len()].len();
                let got = String::from_utf8_lossy(&self.seen[self.mark..upto]).into_owned();
                self.mark = upto;
                return got;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(
                !left.is_zero(),
                "no {what:?} within {timeout:?}; the terminal shows:\n{}",
                self.transcript()
            );
            let mut fds = libc::pollfd {
                fd: self.master.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            let ms = left.as_millis().min(1000) as libc::c_int;
            // SAFETY: one valid pollfd.
            let ready = unsafe { libc::poll(&mut fds, 1, ms) };
            if ready <= 0 {
                continue;
            }
            let mut buf = [0u8; 4096];
            match self.master.read(&mut buf) {
                Ok(0) | Err(_) => panic!(
                    "kiln chat ended before {what:?}; the terminal shows:\n{}",
                    self.transcript()
                ),
                Ok(n) => self.seen.extend_from_slice(&buf[..n]),
            }
        }
    }

    fn send(&mut self, bytes: &str) {
        self.master.write_all(bytes.as_bytes()).unwrap();
        self.master.flush().unwrap();
    }

    /// Types a line and presses Enter.
    fn line(&mut self, text: &str) {
        self.send(text);
        self.send("\r");
    }
}

impl Drop for Terminal {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

const PROMPT: &str = "> ";
const REPLY: Duration = Duration::from_secs(180);

/// The reply to the line just typed: from the end of its echo to the speed line.
fn reply(t: &mut Terminal) -> String {
    let r = t.expect(" t/s]", REPLY);
    t.expect(PROMPT, REPLY);
    r
}

/// The speed line's `prompt N new tokens (C cached)`.
fn speed(reply: &str) -> Option<(usize, usize)> {
    let rest = &reply[reply.rfind("[prompt ")? + "[prompt ".len()..];
    let (new, rest) = rest.split_once(" new tokens (")?;
    let (cached, _) = rest.split_once(" cached)")?;
    Some((new.parse().ok()?, cached.parse().ok()?))
}

#[test]
fn chat_in_a_terminal_two_turns_help_ctrl_c_and_bye() {
    // No -m: the default chat model. Pulling it on first use can take minutes.
    let home = tempfile::tempdir().unwrap();
    let mut t = Terminal::spawn(&["chat", "--verbose", "-n", "300", "-t", "2"], home.path());
    t.expect("/help lists the commands", Duration::from_secs(900));
    t.expect(PROMPT, Duration::from_secs(60));

    t.line("/help");
    t.expect("/system TEXT", REPLY);
    t.expect(PROMPT, REPLY);

    // Two turns: the second needs the first from the history.
    t.line("My name is Ada. Reply with just OK.");
    let first = reply(&mut t);
    assert!(first.contains("[prompt "), "{first}");
    t.line("What is my name? Answer with one word.");
    let second = reply(&mut t);
    assert!(
        second.contains("Ada"),
        "the reply forgot the first turn:\n{second}"
    );
    // The first turn computed its whole prompt; the second reused the first's KV cache and
    // computed only its new message (with the template's markers around it).
    assert_eq!(
        speed(&first),
        Some((speed(&first).unwrap().0, 0)),
        "{first}"
    );
    let (new, cached) = speed(&second).expect("a speed line");
    assert!(
        cached > speed(&first).unwrap().0 && new < 40,
        "turn 2: {new} new, {cached} cached:\n{second}"
    );

    // Ctrl-C once the reply is under way (it has reached 3): the reply stops, the session does
    // not.
    t.line("Count from 1 to 200, separated by commas.");
    t.expect("3", REPLY);
    t.send("\x03");
    t.expect("[stopped]", Duration::from_secs(30));
    t.expect(PROMPT, Duration::from_secs(30));

    t.line("Say hello in French, in one word.");
    let after = reply(&mut t);
    assert!(after.to_lowercase().contains("bonjour"), "{after}");

    t.line("/bye");
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(s) = t.child.try_wait().unwrap() {
            break s;
        }
        assert!(Instant::now() < deadline, "/bye did not end the chat");
        // Keep the terminal drained so the child can never block writing.
        let mut fds = libc::pollfd {
            fd: t.master.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd.
        if unsafe { libc::poll(&mut fds, 1, 100) } > 0 {
            let mut buf = [0u8; 4096];
            if let Ok(n) = t.master.read(&mut buf) {
                t.seen.extend_from_slice(&buf[..n]);
            }
        }
    };
    assert!(status.success(), "{status:?}\n{}", t.transcript());
    eprintln!("{}", t.transcript());
    drop(t);

    // The lines typed are kept in $KILN_HOME/chat_history for the next session, whose Up
    // arrow brings back the last one (/bye, which ends it).
    let kept = std::fs::read_to_string(home.path().join("chat_history")).unwrap();
    assert!(
        kept.contains("My name is Ada.") && kept.contains("/bye"),
        "{kept}"
    );
    let mut t = Terminal::spawn(&["chat", "-t", "2"], home.path());
    t.expect("/help lists the commands", Duration::from_secs(120));
    t.expect(PROMPT, Duration::from_secs(60));
    t.send("\x1b[A");
    t.expect("/bye", Duration::from_secs(30));
    t.send("\r");
    let deadline = Instant::now() + Duration::from_secs(30);
    while t.child.try_wait().unwrap().is_none() {
        assert!(
            Instant::now() < deadline,
            "Up + Enter (/bye) did not end the chat"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}
