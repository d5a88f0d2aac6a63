//! The shell program that publishes one file on a host ([`publish_script`]), and running a
//! command with an item's sudo setting ([`with_sudo`]).

use crate::cmdb::config_items::{ItemVersion, SudoSpec};
use crate::kit::ssh::client::shell_quote;

/// `cmd` with `{file}` and `{path}` replaced by quoted paths, in one pass (a path that itself
/// holds `{path}` is not substituted again).
fn fill(cmd: &str, file: &str, path: &str) -> String {
    let mut out = String::with_capacity(cmd.len());
    let mut rest = cmd;
    while let Some(i) = rest.find('{') {
        out.push_str(&rest[..i]);
        let tail = &rest[i..];
        if let Some(t) = tail.strip_prefix("{file}") {
            out.push_str(&shell_quote(file));
            rest = t;
        } else if let Some(t) = tail.strip_prefix("{path}") {
            out.push_str(&shell_quote(path));
            rest = t;
        } else {
            out.push('{');
            rest = &tail[1..];
        }
    }
    out.push_str(rest);
    out
}

/// The shell program that publishes one file, fed the file on stdin. Lines on stdout starting
/// with `opslet:` say what happened; the commands' own output goes to stderr.
pub(super) fn publish_script(item: &ItemVersion, path: &str, new_sha: &str, tag: &str) -> String {
    let s = &item.spec;
    let (dir, base) = path.rsplit_once('/').map(|(d, b)| (if d.is_empty() { "/" } else { d }, b)).unwrap_or(("/", path));
    let tmp = format!("{dir}/.{base}.opslet-{tag}.tmp");
    let bak = format!("{dir}/.{base}.opslet-{tag}.bak");
    let q = shell_quote;
    let own = |f: &str| {
        let mut c = format!("chmod {} {f}", q(&s.mode));
        match (&s.owner, &s.group) {
            (Some(o), Some(g)) => c.push_str(&format!(" && chown {}:{} {f}", q(o), q(g))),
            (Some(o), None) => c.push_str(&format!(" && chown {} {f}", q(o))),
            (None, Some(g)) => c.push_str(&format!(" && chgrp {} {f}", q(g))),
            (None, None) => {}
        }
        c
    };
    let mut out = String::new();
    let mut line = |l: &str| {
        out.push_str(l);
        out.push('\n');
    };
    line(&format!("t={}; tmp={}; bak={}; d={}", q(path), q(&tmp), q(&bak), q(dir)));
    // One publish of this file at a time on the host: a lock on its folder (no extra file).
    line("exec 9<\"$d\" || { echo 'opslet: failed lock'; cat >/dev/null; exit 19; }");
    line("if command -v flock >/dev/null 2>&1; then flock -w 60 9 || { echo 'opslet: failed lock'; cat >/dev/null; exit 19; }; fi");
    // A symlink in its place could send the write anywhere.
    line(
        "if [ -L \"$t\" ]; then echo 'opslet: failed symlink'; echo \"$t is a symbolic link; opslet does not write through links\" >&2; cat >/dev/null; exit 18; fi",
    );
    line("before=$(sha256sum \"$t\" 2>/dev/null | cut -d' ' -f1); echo \"opslet: before $before\"");
    // The same content: only mode and owner are made right; nothing is reloaded.
    line(&format!(
        "if [ \"$before\" = {} ]; then cat >/dev/null; {} >&2 || {{ echo 'opslet: failed owner'; exit 21; }}; echo 'opslet: unchanged'; exit 0; fi",
        q(new_sha),
        own("\"$t\"")
    ));
    line("umask 077");
    line("cat >\"$tmp\" || { echo 'opslet: failed write'; rm -f \"$tmp\"; exit 20; }");
    line(&format!("{} >&2 || {{ echo 'opslet: failed owner'; rm -f \"$tmp\"; exit 21; }}", own("\"$tmp\"")));
    if let Some(v) = s.validate.as_deref().filter(|v| v.contains("{file}")) {
        line(&format!("( {} ) >&2 || {{ echo 'opslet: failed validate'; rm -f \"$tmp\"; exit 22; }}", fill(v, &tmp, path)));
    }
    line(
        "had=0; if [ -e \"$t\" ]; then had=1; cp -p \"$t\" \"$bak\" || { echo 'opslet: failed backup'; rm -f \"$tmp\" \"$bak\"; exit 23; }; fi",
    );
    line("mv -f \"$tmp\" \"$t\" || { echo 'opslet: failed install'; rm -f \"$tmp\" \"$bak\"; exit 24; }");
    let reload = s.reload.as_deref().map(|r| fill(r, path, path));
    // After the move, any failure puts the old file back (a first publish: removes the new one)
    // and reloads with it.
    line("restore() {");
    line(
        "  if [ $had = 1 ]; then mv -f \"$bak\" \"$t\" || { echo 'opslet: restored failed'; return; }; else rm -f \"$t\" || { echo 'opslet: restored failed'; return; }; fi",
    );
    match &reload {
        Some(r) => {
            line(&format!("  if ( {r} ) >&2; then echo 'opslet: restored reloaded'; else echo 'opslet: restored reload-failed'; fi"))
        }
        None => line("  echo 'opslet: restored'"),
    }
    line("}");
    if let Some(v) = s.validate.as_deref().filter(|v| !v.contains("{file}")) {
        line(&format!("( {} ) >&2 || {{ echo 'opslet: failed validate'; restore; exit 22; }}", fill(v, path, path)));
    }
    if let Some(r) = &reload {
        line(&format!("( {r} ) >&2 || {{ echo 'opslet: failed reload'; restore; exit 25; }}"));
    }
    if let Some(h) = s.health.as_deref() {
        line(&format!("( {} ) >&2 || {{ echo 'opslet: failed health'; restore; exit 26; }}", fill(h, path, path)));
    }
    line("rm -f \"$bak\"");
    line("echo \"opslet: after $(sha256sum \"$t\" | cut -d' ' -f1)\"");
    out
}

/// `body` run with the item's sudo setting.
pub(super) fn with_sudo(sudo: &Option<SudoSpec>, body: &str) -> String {
    let user = match sudo {
        None | Some(SudoSpec::Root(false)) => return format!("sh -c {}", shell_quote(body)),
        Some(SudoSpec::Root(true)) => "root".to_string(),
        Some(SudoSpec::User(u)) => u.clone(),
    };
    format!("sudo -n -u {} -- sh -c {}", shell_quote(&user), shell_quote(body))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cmdb::config_items::ItemSpec;

    fn item(validate: &str) -> ItemVersion {
        let spec = ItemSpec::parse(
            "x.toml",
            &format!("name = \"app\"\npath = \"/etc/my app/app.conf\"\nvalidate = \"{validate}\"\nreload = \"systemctl reload app\"\ntemplate = \"x\"\n"),
            None,
        )
        .unwrap();
        ItemVersion {
            name: "app".into(),
            version: 1,
            author: "a".into(),
            message: "m".into(),
            created_at: chrono::Utc::now(),
            spec,
            diff: String::new(),
        }
    }

    #[test]
    fn the_script_validates_the_candidate_before_the_move_when_it_can() {
        let s = publish_script(&item("app --check {file}"), "/etc/my app/app.conf", "abc", "r1");
        let validate = s.find("app --check '/etc/my app/.app.conf.opslet-r1.tmp'").expect("validated as the temp file");
        assert!(validate < s.find("mv -f \"$tmp\" \"$t\"").unwrap(), "{s}");
        // Without {file}, the installed file is validated, and a failure restores the old one.
        let s = publish_script(&item("app --check"), "/etc/my app/app.conf", "abc", "r1");
        let mv = s.find("mv -f \"$tmp\" \"$t\"").unwrap();
        let validate = s.find("( app --check ) >&2 || { echo 'opslet: failed validate'; restore;").unwrap();
        assert!(mv < validate, "{s}");
        assert!(s.contains("t='/etc/my app/app.conf'"));
    }
}
