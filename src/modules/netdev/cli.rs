//! A session with a network device's CLI: an interactive shell on a pseudo-terminal, driven by
//! a [`Profile`] (prompts, paging, modes, errors). Plain async Rust over a russh channel; nothing
//! here knows Lua, the cmdb or the audit log.
//!
//! Every exchange is: send one line, then read until the line the cursor is on is a prompt (or
//! an expected pattern shows). Paging prompts (`--More--`) are answered on the way and removed
//! from the output, as are the echo of the command, escape sequences and backspaces.

use std::sync::Arc;
use std::time::Duration;

use regex::Regex;
use russh::ChannelMsg;
use tokio::time::Instant;

use super::profile::{Mode, Profile};
use crate::kit::ssh::client::Session;

/// How wide the terminal is: wide enough that devices do not wrap long lines.
const COLUMNS: u32 = 511;

#[derive(Debug, Clone, thiserror::Error)]
pub enum CliError {
    #[error("no answer within {} waiting for {waiting}{}", humantime::format_duration(*after), last(seen))]
    Timeout { waiting: String, after: Duration, seen: String },
    #[error("the device closed the session{}", last(seen))]
    Closed { seen: String },
    #[error("the device rejected `{command}`: {message}")]
    Rejected { command: String, message: String, output: String },
    #[error("the output of `{command}` is over {max} bytes ([netdev] max_output); the session can no longer be used")]
    TooMuch { command: String, max: usize },
    #[error("{0}")]
    Protocol(String),
    #[error("the session is unusable after an earlier failure ({0}); open a new one")]
    Broken(String),
}

fn last(seen: &str) -> String {
    let tail: Vec<&str> = seen.trim_end().lines().rev().take(2).collect();
    if tail.is_empty() {
        String::new()
    } else {
        let t: Vec<&str> = tail.into_iter().rev().collect();
        let s = t.join(" / ");
        let s = if s.chars().count() > 160 {
            format!("...{}", s.chars().rev().take(160).collect::<String>().chars().rev().collect::<String>())
        } else {
            s
        };
        format!(" (last output: {s:?})")
    }
}

/// What a terminal would show, as text: escape sequences dropped, backspaces and cursor-left
/// applied within the current line, CR LF as LF, and a lone CR starting the line over.
#[derive(Debug, Default)]
pub struct Screen {
    text: String,
    esc: Esc,
    utf8: Vec<u8>,
    cr: bool,
}

#[derive(Debug, Default, PartialEq)]
enum Esc {
    #[default]
    None,
    Escape,
    /// ESC ( or ESC ): one more byte names a character set.
    Charset,
    Csi(String),
}

impl Screen {
    pub fn feed(&mut self, bytes: &[u8]) {
        self.utf8.extend_from_slice(bytes);
        let (text, rest) = match std::str::from_utf8(&self.utf8) {
            Ok(s) => (s.to_string(), Vec::new()),
            Err(e) if e.error_len().is_none() => {
                let cut = e.valid_up_to();
                (String::from_utf8_lossy(&self.utf8[..cut]).into_owned(), self.utf8[cut..].to_vec())
            }
            Err(_) => (String::from_utf8_lossy(&self.utf8).into_owned(), Vec::new()),
        };
        self.utf8 = rest;
        for c in text.chars() {
            self.put(c);
        }
    }

    fn put(&mut self, c: char) {
        match std::mem::take(&mut self.esc) {
            Esc::Escape => {
                self.esc = match c {
                    '[' => Esc::Csi(String::new()),
                    '(' | ')' => Esc::Charset,
                    _ => Esc::None,
                };
                return;
            }
            Esc::Charset => return,
            Esc::Csi(mut params) => {
                if ('@'..='~').contains(&c) {
                    if c == 'D' {
                        // Never more than the line holds (a device could ask for usize::MAX).
                        let n = params.parse::<usize>().unwrap_or(1).min(self.text.len() - self.line_start());
                        (0..n).for_each(|_| self.back());
                    }
                } else {
                    // Parameters past 16 bytes are not kept (the sequence still ends at its final byte).
                    if params.len() < 16 {
                        params.push(c);
                    }
                    self.esc = Esc::Csi(params);
                }
                return;
            }
            Esc::None => {}
        }
        if self.cr {
            self.cr = false;
            if c != '\n' && c != '\r' {
                let start = self.line_start();
                self.text.truncate(start);
            }
        }
        match c {
            '\x1b' => self.esc = Esc::Escape,
            '\r' => self.cr = true,
            '\x08' => self.back(),
            '\n' | '\t' => self.text.push(c),
            c if c.is_control() => {}
            c => self.text.push(c),
        }
    }

    /// Removes the last character of the current line, if it has one.
    fn back(&mut self) {
        if self.text.len() > self.line_start() {
            self.text.pop();
        }
    }

    /// Where the line the cursor is on starts.
    pub fn line_start(&self) -> usize {
        self.text.rfind('\n').map_or(0, |i| i + 1)
    }

    pub fn line(&self) -> &str {
        &self.text[self.line_start()..]
    }

    pub fn text(&self) -> &str {
        &self.text
    }

    pub fn len(&self) -> usize {
        self.text.len()
    }

    pub fn is_empty(&self) -> bool {
        self.text.is_empty()
    }

    fn truncate(&mut self, at: usize) {
        self.text.truncate(at);
    }

    /// Forgets everything before the current line.
    fn keep_line(&mut self) {
        let start = self.line_start();
        self.text.drain(..start);
    }

    fn clear(&mut self) {
        self.text.clear();
    }
}

/// Why reading stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stop {
    Prompt(Mode),
    /// The index of the expected pattern that showed.
    Expect(usize),
}

/// What a configuration change did.
#[derive(Debug, Clone, Default)]
pub struct Applied {
    /// Lines accepted (all of them, on success).
    pub lines: usize,
    /// The exchange as a terminal would show it: prompt, line, answer.
    pub transcript: String,
    pub saved: bool,
}

/// A configuration line the device refused. The lines before it were applied (and stay, unless
/// the profile's commit step is what failed); configuration mode was left.
#[derive(Debug, Clone)]
pub struct LineRejected {
    /// 0-based index into the lines given.
    pub index: usize,
    pub line: String,
    pub message: String,
    pub transcript: String,
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum ConfigError {
    #[error("line {} `{}` was rejected: {}", .0.index + 1, .0.line, .0.message)]
    Line(LineRejected),
    #[error(transparent)]
    Cli(#[from] CliError),
}

pub struct Cli {
    ch: russh::Channel<russh::client::Msg>,
    pub profile: Arc<Profile>,
    screen: Screen,
    pub mode: Mode,
    pub prompt: String,
    max_output: usize,
    broken: Option<String>,
}

impl Cli {
    /// Starts a shell on `session`, waits for the first prompt, enters privileged mode when the
    /// profile has one (answering a password prompt with `enable_secret`, or an empty line) and
    /// turns paging off.
    pub async fn open(
        session: &Session,
        profile: Arc<Profile>,
        enable_secret: Option<&str>,
        timeout: Duration,
        max_output: usize,
    ) -> Result<Cli, CliError> {
        let ch = session.shell(COLUMNS).await.map_err(CliError::Protocol)?;
        let mut cli = Cli { ch, profile, screen: Screen::default(), mode: Mode::User, prompt: String::new(), max_output, broken: None };
        // Some devices print their prompt only after a first Enter.
        let nudge = Duration::from_secs(2).min(timeout);
        let first = match cli.read(nudge, "the first prompt", &[], None, "").await {
            Err(CliError::Timeout { .. }) if nudge < timeout => {
                cli.broken = None;
                cli.send("").await?;
                cli.read(timeout - nudge, "the first prompt", &[], None, "").await?
            }
            other => other?,
        };
        cli.settle(first);
        if cli.mode == Mode::User
            && cli.profile.privileged.is_some()
            && let Some((enable, password_prompt)) = cli.profile.enable.clone()
        {
            let start = cli.screen.line_start();
            cli.send(&enable).await?;
            let (out, stop) = cli.read(timeout, &format!("`{enable}`"), &[password_prompt], Some(start), &enable).await?;
            let (out, stop) = if stop == Stop::Expect(0) {
                cli.screen.clear();
                cli.send_secret(enable_secret.unwrap_or("")).await?;
                cli.read(timeout, "the answer to the enable password", &[], Some(0), "").await?
            } else {
                (out, stop)
            };
            cli.settle((out.clone(), stop));
            if cli.mode != Mode::Privileged {
                let why = cli.profile.error_in(&out).unwrap_or("the prompt stayed in user mode").to_string();
                return Err(CliError::Rejected {
                    command: enable,
                    message: format!("{why} (check the device's enable_secret)"),
                    output: out,
                });
            }
        }
        for c in cli.profile.paging_off.clone() {
            match cli.command(&c, timeout).await {
                Ok(_) | Err(CliError::Rejected { .. }) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(cli)
    }

    async fn send(&mut self, line: &str) -> Result<(), CliError> {
        if let Some(why) = &self.broken {
            return Err(CliError::Broken(why.clone()));
        }
        self.ch.data_bytes(format!("{line}\n").into_bytes()).await.map_err(|e| self.fail(CliError::Protocol(format!("sending: {e}"))))
    }

    /// Sends a password: like [`Cli::send`], but what is sent never appears in an error.
    async fn send_secret(&mut self, secret: &str) -> Result<(), CliError> {
        self.send(secret).await
    }

    fn fail(&mut self, e: CliError) -> CliError {
        self.broken = Some(e.to_string());
        e
    }

    /// Reads until a prompt on a line after the one starting at `start` (when given) or one of
    /// `expect` shows;
    /// returns the output after the echo of `sent`, and why reading stopped.
    async fn read(
        &mut self,
        timeout: Duration,
        waiting: &str,
        expect: &[Regex],
        start: Option<usize>,
        sent: &str,
    ) -> Result<(String, Stop), CliError> {
        if let Some(why) = &self.broken {
            return Err(CliError::Broken(why.clone()));
        }
        let from = start.unwrap_or(0).min(self.screen.len());
        let deadline = Instant::now() + timeout;
        loop {
            // Reads start at the beginning of the line the command was typed on (the prompt's):
            // a device redrawing that line (CR, backspaces) never reaches before it.
            let from = from.min(self.screen.len());
            // The echo of what was sent is the rest of the line it was typed on.
            let body = match self.screen.text()[from..].find('\n') {
                Some(i) => from + i + 1,
                None => self.screen.len(),
            };
            if let Some(more) = &self.profile.more
                && let Some(m) = more.find(self.screen.line())
            {
                let at = (self.screen.line_start() + m.start()).max(from);
                self.screen.truncate(at);
                let answer = self.profile.more_answer.clone();
                self.ch
                    .data_bytes(answer.into_bytes())
                    .await
                    .map_err(|e| self.fail(CliError::Protocol(format!("answering a page prompt: {e}"))))?;
                continue;
            }
            if let Some(i) = expect.iter().position(|r| r.is_match(&self.screen.text()[body..])) {
                let out = self.screen.text()[body..].to_string();
                return Ok((out, Stop::Expect(i)));
            }
            let fresh = start.is_none_or(|s| self.screen.line_start() > s);
            if fresh && let Some(mode) = self.profile.mode_of(self.screen.line()) {
                let end = self.screen.line_start().max(body);
                let mut out = self.screen.text()[body.min(end)..end].to_string();
                if !sent.is_empty() && start.is_some() {
                    let echo = self.screen.text()[from..body.min(end)].trim_end();
                    if !echo.trim_end().ends_with(sent.trim()) {
                        // No echo after all: the first line is output.
                        out = self.screen.text()[from..end].to_string();
                    }
                }
                while out.ends_with('\n') {
                    out.pop();
                }
                if let Some(banner) = &self.profile.banner {
                    while let Some(last) = out.rsplit('\n').next()
                        && banner.is_match(last.trim_end())
                    {
                        out.truncate(out.len() - last.len());
                        while out.ends_with('\n') {
                            out.pop();
                        }
                    }
                }
                return Ok((out, Stop::Prompt(mode)));
            }
            if self.screen.len().saturating_sub(from) > self.max_output {
                return Err(self.fail(CliError::TooMuch { command: waiting.to_string(), max: self.max_output }));
            }
            let msg = match tokio::time::timeout_at(deadline, self.ch.wait()).await {
                Err(_) => {
                    let seen = self.screen.text()[from..].to_string();
                    return Err(self.fail(CliError::Timeout { waiting: waiting.to_string(), after: timeout, seen }));
                }
                Ok(m) => m,
            };
            match msg {
                Some(ChannelMsg::Data { data }) | Some(ChannelMsg::ExtendedData { data, .. }) => self.screen.feed(&data),
                Some(ChannelMsg::Failure) => return Err(self.fail(CliError::Protocol("the device refused to start a shell".into()))),
                None | Some(ChannelMsg::Eof) | Some(ChannelMsg::Close) | Some(ChannelMsg::ExitStatus { .. }) => {
                    let seen = self.screen.text()[from..].to_string();
                    return Err(self.fail(CliError::Closed { seen }));
                }
                Some(_) => {}
            }
        }
    }

    /// Takes the mode and prompt from a read that ended at a prompt, and forgets the output.
    fn settle(&mut self, (_, stop): (String, Stop)) {
        if let Stop::Prompt(mode) = stop {
            self.mode = mode;
            self.prompt = self.screen.line().trim_end().to_string();
            self.screen.keep_line();
        }
    }

    /// Sends `line` and waits for the next prompt, `timeout` at most.
    async fn exchange(&mut self, line: &str, timeout: Duration, expect: &[Regex]) -> Result<(String, Stop), CliError> {
        let start = self.screen.line_start();
        self.send(line).await?;
        let r = self.read(timeout, &format!("`{line}`"), expect, Some(start), line).await?;
        if let Stop::Prompt(_) = r.1 {
            self.settle(r.clone());
        }
        Ok(r)
    }

    /// Runs one command; fails when the device marks its output as an error.
    pub async fn command(&mut self, command: &str, timeout: Duration) -> Result<String, CliError> {
        let (out, _) = self.exchange(command, timeout, &[]).await?;
        match self.profile.error_in(&out) {
            Some(m) => Err(CliError::Rejected { command: command.to_string(), message: m.to_string(), output: out }),
            None => Ok(out),
        }
    }

    /// Sends `line` and waits for one of `patterns` or the prompt; returns the output and the
    /// index of the pattern that showed (None: the prompt came back).
    pub async fn expect(&mut self, line: &str, patterns: &[Regex], timeout: Duration) -> Result<(String, Option<usize>), CliError> {
        let (out, stop) = self.exchange(line, timeout, patterns).await?;
        Ok(match stop {
            Stop::Expect(i) => {
                // The device now waits on this line for an answer.
                self.screen.clear();
                (out, Some(i))
            }
            Stop::Prompt(_) => (out, None),
        })
    }

    /// Enters configuration mode, sends `lines` one by one (stopping at the first the device
    /// rejects), commits when the profile says so, leaves configuration mode and saves when
    /// asked. On a rejected line configuration mode is left too, so the session stays usable.
    pub async fn config(&mut self, lines: &[String], save: bool, timeout: Duration) -> Result<Applied, ConfigError> {
        let mut applied = Applied::default();
        if self.mode != Mode::Config {
            let enter = self.profile.config_enter.clone();
            self.command(&enter, timeout).await?;
            if self.mode != Mode::Config {
                return Err(
                    CliError::Protocol(format!("`{enter}` did not enter configuration mode (the prompt is `{}`)", self.prompt)).into()
                );
            }
        }
        let commit = self.profile.commit.clone();
        for (index, line) in lines.iter().chain(commit.iter()).enumerate() {
            let before = self.prompt.clone();
            let (out, _) = self.exchange(line, timeout, &[]).await?;
            applied.transcript.push_str(&format!("{before}{line}\n{}", if out.is_empty() { String::new() } else { format!("{out}\n") }));
            if let Some(message) = self.profile.error_in(&out) {
                let message = message.to_string();
                for a in self.profile.abort.clone() {
                    if self.exchange(&a, timeout, &[]).await.is_err() {
                        break;
                    }
                }
                let _ = self.leave_config(timeout).await;
                let line = line.clone();
                return Err(ConfigError::Line(LineRejected { index, line, message, transcript: applied.transcript }));
            }
            if index < lines.len() {
                applied.lines += 1;
            }
            if self.mode != Mode::Config {
                // A line that left configuration mode (`end`, `return`): go back in for the rest.
                let enter = self.profile.config_enter.clone();
                self.command(&enter, timeout).await?;
            }
        }
        self.leave_config(timeout).await?;
        if save {
            self.save(timeout).await?;
            applied.saved = true;
        }
        Ok(applied)
    }

    async fn leave_config(&mut self, timeout: Duration) -> Result<(), CliError> {
        let exit = self.profile.config_exit.clone();
        for _ in 0..8 {
            if self.mode != Mode::Config {
                return Ok(());
            }
            self.exchange(&exit, timeout, &[]).await?;
        }
        Err(CliError::Protocol(format!("`{exit}` did not leave configuration mode (the prompt is `{}`)", self.prompt)))
    }

    /// Saves the running configuration with the profile's steps.
    pub async fn save(&mut self, timeout: Duration) -> Result<(), CliError> {
        for step in self.profile.save.clone() {
            match &step.expect {
                Some(re) => {
                    let (out, got) = self.expect(&step.send, std::slice::from_ref(re), timeout).await?;
                    if got.is_none() {
                        let message = self.profile.error_in(&out).unwrap_or("the device did not ask for confirmation").to_string();
                        return Err(CliError::Rejected { command: step.send.clone(), message, output: out });
                    }
                }
                None => {
                    self.command(&step.send, timeout).await?;
                }
            }
        }
        Ok(())
    }

    /// Whether the session can still be used.
    pub fn usable(&self) -> bool {
        self.broken.is_none()
    }

    pub async fn close(&mut self) {
        let _ = self.ch.close().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_screen_drops_escapes_and_applies_backspaces() {
        let mut s = Screen::default();
        s.feed(b"show ver\r\nline one\r\n\x1b[1mbold\x1b[0m\r\n");
        assert_eq!(s.text(), "show ver\nline one\nbold\n");
        // Cisco's --More-- erased with backspaces, then the next line.
        s.feed(b" --More-- \x08\x08\x08\x08\x08\x08\x08\x08\x08\x08          \x08\x08\x08\x08\x08\x08\x08\x08\x08\x08next");
        assert_eq!(s.line(), "next");
        // Huawei's ---- More ---- erased with cursor-left and spaces.
        let mut h = Screen::default();
        h.feed(b"a\r\n  ---- More ----\x1b[16D                \x1b[16Db\r\n");
        assert_eq!(h.text(), "a\nb\n");
        // A lone CR starts the line over; one split from its LF across reads is still a newline.
        let mut c = Screen::default();
        c.feed(b"progress 10%\rprogress 100%\r");
        c.feed(b"\ndone");
        assert_eq!(c.text(), "progress 100%\ndone");
        // An escape sequence and a UTF-8 character split across reads.
        let mut u = Screen::default();
        u.feed(b"x\x1b[");
        u.feed(b"0my \xc3");
        u.feed(b"\xa9");
        assert_eq!(u.text(), "xy \u{e9}");
        // A cursor-left longer than the line, or an endless escape sequence, costs nothing.
        let mut huge = Screen::default();
        huge.feed(b"keep\nabc\x1b[18446744073709551615Dx");
        assert_eq!(huge.text(), "keep\nx");
        let mut long = Screen::default();
        long.feed(b"a\x1b[");
        long.feed(&[b'1'; 100_000]);
        long.feed(b"mb");
        assert!(long.text().len() < 100, "{}", long.text().len());
        // Backspace never eats into the previous line.
        let mut b = Screen::default();
        b.feed(b"ab\n\x08\x08c");
        assert_eq!(b.text(), "ab\nc");
    }
}
