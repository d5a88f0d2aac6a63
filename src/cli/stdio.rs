//! Where a command's output goes and its input comes from: the process's own stdout, stderr and
//! stdin, or — for a command the server runs for a CLI on its local socket ([`super::local`]) —
//! that CLI's, carried over the socket. Commands print through [`outln!`] and [`errln!`] (never
//! `println!`), read through [`read_stdin`], and ask [`is_terminal`] before drawing for a person.

use std::cell::RefCell;
use std::io::Write;
use std::sync::Arc;

/// One of the two output streams.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    Out,
    Err,
}

/// Where a forwarded command's output goes, and what the caller's side looks like.
pub trait Sink: Send + Sync {
    fn write(&self, stream: Stream, bytes: &[u8]);
}

/// The other end of a forwarded command: its output sink, and whether its streams are
/// terminals (its stdin, read by the CLI before it sent the command, goes to [`with_input`]).
#[derive(Clone)]
pub struct Remote {
    pub sink: Arc<dyn Sink>,
    /// Paths the server made absolute, shown as the caller wrote them (see `show_as`).
    pub shown_as: Vec<(String, String)>,
    pub out_tty: bool,
    pub err_tty: bool,
    /// The width of the caller's terminal, when its stdout is one.
    pub width: Option<u16>,
}

thread_local! {
    static REMOTE: RefCell<Option<Remote>> = const { RefCell::new(None) };
    /// The command's stdin, when it was read ahead (by the CLI, before it knew where the
    /// command would run).
    static INPUT: RefCell<Option<Vec<u8>>> = const { RefCell::new(None) };
}

/// Runs `f` with `input` (when given) as the command's stdin.
pub fn with_input<T>(input: Option<Vec<u8>>, f: impl FnOnce() -> T) -> T {
    struct Reset;
    impl Drop for Reset {
        fn drop(&mut self) {
            INPUT.with(|i| i.borrow_mut().take());
        }
    }
    INPUT.with(|i| *i.borrow_mut() = input);
    let _reset = Reset;
    f()
}

/// Runs `f` with this thread's output going to `remote`.
pub fn with_remote<T>(remote: Remote, f: impl FnOnce() -> T) -> T {
    struct Reset;
    impl Drop for Reset {
        fn drop(&mut self) {
            REMOTE.with(|r| r.borrow_mut().take());
        }
    }
    REMOTE.with(|r| *r.borrow_mut() = Some(remote));
    let _reset = Reset;
    f()
}

/// Where this thread's output goes, to carry to another thread (a run thread's log sink).
pub fn current() -> Option<Remote> {
    REMOTE.with(|r| r.borrow().clone())
}

/// Runs `f` with this thread's output going where `to` (from [`current`]) says.
pub fn with_output<T>(to: &Option<Remote>, f: impl FnOnce() -> T) -> T {
    match to {
        Some(r) => with_remote(r.clone(), f),
        None => f(),
    }
}

/// Whether this thread runs a command for a CLI on the local socket.
pub fn is_remote() -> bool {
    REMOTE.with(|r| r.borrow().is_some())
}

/// Output that names `resolved` names it as `given` (a relative path of the caller's, which
/// the server resolved against the caller's working directory).
pub fn show_as(resolved: String, given: String) {
    REMOTE.with(|r| {
        if let Some(r) = r.borrow_mut().as_mut() {
            r.shown_as.push((resolved, given));
        }
    });
}

/// Text for this process's own stderr, whoever the current command's caller is.
pub fn to_own_stderr(text: &str) {
    let _ = std::io::stderr().lock().write_all(text.as_bytes());
}

/// A writer for one stream of the current command.
pub struct Writer(Stream);

impl Write for Writer {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let sent = REMOTE.with(|r| {
            let r = r.borrow();
            let Some(r) = r.as_ref() else { return false };
            if r.shown_as.is_empty() {
                r.sink.write(self.0, buf);
            } else {
                let mut text = String::from_utf8_lossy(buf).into_owned();
                for (resolved, given) in &r.shown_as {
                    text = text.replace(resolved.as_str(), given);
                }
                r.sink.write(self.0, text.as_bytes());
            }
            true
        });
        match (sent, self.0) {
            (true, _) => Ok(buf.len()),
            (false, Stream::Out) => std::io::stdout().lock().write(buf),
            (false, Stream::Err) => std::io::stderr().lock().write(buf),
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        match self.0 {
            Stream::Out if !is_remote() => std::io::stdout().flush(),
            _ => Ok(()),
        }
    }
}

pub fn stdout() -> Writer {
    Writer(Stream::Out)
}

pub fn stderr() -> Writer {
    Writer(Stream::Err)
}

/// Whether `stream` of the command's caller is a terminal.
pub fn is_terminal(stream: Stream) -> bool {
    REMOTE.with(|r| match (r.borrow().as_ref(), stream) {
        (Some(r), Stream::Out) => r.out_tty,
        (Some(r), Stream::Err) => r.err_tty,
        (None, Stream::Out) => std::io::IsTerminal::is_terminal(&std::io::stdout()),
        (None, Stream::Err) => std::io::IsTerminal::is_terminal(&std::io::stderr()),
    })
}

/// Whether this process's stdin is a terminal (asked by the CLI before it sends a command).
pub fn stdin_is_terminal() -> bool {
    std::io::IsTerminal::is_terminal(&std::io::stdin())
}

/// The width in columns of the terminal the command's stdout goes to: None when it is not a
/// terminal, or one that reports no width (0 columns: serial consoles, some CI runners).
pub fn terminal_width() -> Option<u16> {
    if let Some(w) = REMOTE.with(|r| r.borrow().as_ref().map(|r| r.width)) {
        return w;
    }
    local_terminal_width()
}

/// The width of this process's own terminal (see [`terminal_width`]).
pub fn local_terminal_width() -> Option<u16> {
    // SAFETY: winsize is plain data that TIOCGWINSZ fills in on a terminal.
    let mut ws: libc::winsize = unsafe { std::mem::zeroed() };
    // SAFETY: an ioctl on our own stdout descriptor with a valid out-pointer.
    let r = unsafe { libc::ioctl(libc::STDOUT_FILENO, libc::TIOCGWINSZ, &mut ws) };
    (r == 0 && ws.ws_col > 0).then_some(ws.ws_col)
}

/// All of the command's stdin.
pub fn read_stdin() -> std::io::Result<Vec<u8>> {
    if let Some(bytes) = INPUT.with(|i| i.borrow_mut().take()) {
        return Ok(bytes);
    }
    if is_remote() {
        // The CLI sends stdin only to the commands that read it.
        return Ok(Vec::new());
    }
    let mut v = Vec::new();
    std::io::Read::read_to_end(&mut std::io::stdin(), &mut v)?;
    Ok(v)
}

/// `println!` for a command's output.
macro_rules! outln {
    ($($t:tt)*) => {{
        let line = format!("{}\n", format_args!($($t)*));
        let _ = std::io::Write::write_all(&mut $crate::cli::stdio::stdout(), line.as_bytes());
    }};
}

/// `print!` for a command's output.
macro_rules! out {
    ($($t:tt)*) => {{
        let text = format!($($t)*);
        let _ = std::io::Write::write_all(&mut $crate::cli::stdio::stdout(), text.as_bytes());
    }};
}

/// `eprintln!` for a command's notes and errors.
macro_rules! errln {
    ($($t:tt)*) => {{
        let line = format!("{}\n", format_args!($($t)*));
        let _ = std::io::Write::write_all(&mut $crate::cli::stdio::stderr(), line.as_bytes());
    }};
}

pub(crate) use {errln, out, outln};
