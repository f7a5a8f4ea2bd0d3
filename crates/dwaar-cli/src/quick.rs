//! The quick commands: `reverse-proxy`, `file-server` and `respond` serve without a config
//! file, as Caddy's commands of the same names do.
//!
//! Each turns its flags into Dwaarfile text and runs it like `dwaar run` would, so the
//! flags mean exactly what the directives mean and get the same validation. Like Caddy,
//! they run with the admin API off (stop them with a signal). A flag that cannot apply
//! to the given addresses is refused rather than ignored.

use crate::run::{self, ConfigSource, RunOptions};
use clap::Args;
use std::fmt::Write as _;
use std::io::{IsTerminal, Read};
use std::path::PathBuf;

#[derive(Args)]
pub struct ReverseProxyArgs {
    /// The address to serve: a host name (HTTPS, with an automatic certificate), a
    /// `:port` (plain HTTP), or a full `scheme://host:port`.
    #[arg(long, short, default_value = "localhost")]
    from: String,
    /// A backend (`host:port` or `https://host:port`); repeat for load balancing.
    #[arg(long, short, required = true, value_delimiter = ',')]
    to: Vec<String>,
    /// Send the backend's address as the Host header instead of the client's.
    #[arg(long, short = 'c')]
    change_host_header: bool,
    /// Do not verify the certificates of https:// backends.
    #[arg(long)]
    insecure: bool,
    /// Certificates from Dwaar's local CA even for public names.
    #[arg(long, short = 'i')]
    internal_certs: bool,
    /// Do not redirect HTTP to HTTPS (and leave the HTTP port alone).
    #[arg(long, short = 'r')]
    disable_redirects: bool,
    /// Set a request header for the backend ("Field: value"; repeatable).
    #[arg(long, short = 'H', value_name = "FIELD: VALUE")]
    header_up: Vec<String>,
    /// Set a response header for the client ("Field: value"; repeatable).
    #[arg(long, short = 'd', value_name = "FIELD: VALUE")]
    header_down: Vec<String>,
    #[command(flatten)]
    common: CommonArgs,
}

#[derive(Args)]
pub struct FileServerArgs {
    /// Serve this host name over HTTPS (with an automatic certificate).
    #[arg(long, short)]
    domain: Option<String>,
    /// The directory to serve (default: the current directory).
    #[arg(long, short)]
    root: Option<PathBuf>,
    /// The address to listen on (default: :80, or :443 with --domain).
    #[arg(long, short)]
    listen: Option<String>,
    /// List the files of directories without an index file.
    #[arg(long, short)]
    browse: bool,
    /// Render files as templates (not supported yet: refused).
    #[arg(long, short)]
    templates: bool,
    /// Serve precompressed siblings (file.br, file.zst, file.gz); optionally the
    /// encodings in order of preference, e.g. `--precompressed br,gzip`.
    #[arg(long, short, num_args = 0.., value_delimiter = ',', value_name = "ENCODINGS")]
    precompressed: Option<Vec<String>>,
    #[command(flatten)]
    common: CommonArgs,
}

#[derive(Args)]
pub struct RespondArgs {
    /// The body (placeholders such as {http.request.uri} are filled in); else --body,
    /// else standard input when it is not a terminal.
    body_arg: Option<String>,
    /// The body.
    #[arg(long, short, conflicts_with = "body_arg")]
    body: Option<String>,
    /// The status code.
    #[arg(long, short, default_value_t = 200)]
    status: u16,
    /// A response header ("Field: value"; repeatable).
    #[arg(long = "header", short = 'H', value_name = "FIELD: VALUE")]
    headers: Vec<String>,
    /// Where to listen: host:port, with port 0 for a free port or a range (8000-8004)
    /// for one server per port.
    #[arg(long, short, default_value = "localhost:0")]
    listen: String,
    #[command(flatten)]
    common: CommonArgs,
}

#[derive(Args)]
struct CommonArgs {
    /// Log every request (to stderr).
    #[arg(long, short = 'a')]
    access_log: bool,
    /// Log at debug level.
    #[arg(long, short = 'v')]
    debug: bool,
}

pub fn reverse_proxy(a: &ReverseProxyArgs) -> i32 {
    match reverse_proxy_config(a) {
        Ok(text) => serve(
            text,
            a.to.iter()
                .map(|t| format!("dwaar proxying {} -> {t}", a.from))
                .collect(),
        ),
        Err(e) => refuse(&e),
    }
}

pub fn file_server(a: &FileServerArgs) -> i32 {
    match file_server_config(a) {
        Ok((text, at)) => serve(text, vec![format!("dwaar serving files on {at}")]),
        Err(e) => refuse(&e),
    }
}

pub fn respond(a: &RespondArgs) -> i32 {
    let body = match (&a.body_arg, &a.body) {
        (Some(b), _) | (None, Some(b)) => b.clone(),
        (None, None) if !std::io::stdin().is_terminal() => {
            let mut s = String::new();
            if let Err(e) = std::io::stdin().read_to_string(&mut s) {
                return refuse(&format!("cannot read the body from stdin: {e}"));
            }
            s
        }
        (None, None) => String::new(),
    };
    match respond_config(a, &body) {
        Ok((text, addresses)) => serve(
            text,
            addresses
                .iter()
                .map(|at| format!("Server address: {at}"))
                .collect(),
        ),
        Err(e) => refuse(&e),
    }
}

fn refuse(e: &str) -> i32 {
    eprintln!("error: {e}");
    1
}

fn serve(text: String, announce: Vec<String>) -> i32 {
    run::run(RunOptions {
        source: ConfigSource::Generated(text),
        threads: None,
        workers: None,
        watch: false,
        pidfile: None,
        environ: false,
        announce,
    })
}

/// The global options block every quick command starts with.
fn globals(common: &CommonArgs, extra: &[&str]) -> String {
    let mut g = String::from("{\n\tadmin off\n");
    if common.debug {
        g.push_str("\tdebug\n");
    }
    for line in extra {
        let _ = writeln!(g, "\t{line}");
    }
    g.push_str("}\n\n");
    g
}

/// A Dwaarfile token for arbitrary text: double-quoted, with `"` and `\` escaped.
fn quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        if c == '"' || c == '\\' {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('"');
    out
}

/// `Field: value` from a header flag.
fn header_flag(flag: &str, i: usize, h: &str) -> Result<(String, String), String> {
    match h.split_once(':') {
        Some((k, v)) if !k.trim().is_empty() && !v.trim().is_empty() => {
            Ok((k.trim().to_string(), v.trim().to_string()))
        }
        _ => Err(format!("{flag} {}: {h:?} is not \"Field: value\"", i + 1)),
    }
}

/// The host part of an address such as `https://example.com:8443` (empty for `:8080`).
fn host_of(address: &str) -> &str {
    let rest = address.split_once("://").map_or(address, |(_, r)| r);
    let rest = rest.split('/').next().unwrap_or(rest);
    if let Some(v6) = rest.strip_prefix('[') {
        return v6.split(']').next().unwrap_or(v6);
    }
    rest.rsplit_once(':').map_or(rest, |(h, _)| h)
}

fn reverse_proxy_config(a: &ReverseProxyArgs) -> Result<String, String> {
    let rest = a.from.split_once("://").map_or(a.from.as_str(), |(_, r)| r);
    if rest.contains('/') {
        return Err(format!(
            "--from {}: paths are not allowed (give an address only)",
            a.from
        ));
    }
    let has_host = !host_of(&a.from).is_empty();
    if a.internal_certs && !has_host {
        return Err(
            "--internal-certs needs a host name in --from (e.g. --from example.test)".into(),
        );
    }
    let tls_upstream = a.to.iter().any(|t| t.starts_with("https://"));
    if a.insecure && !tls_upstream {
        return Err("--insecure applies to https:// backends only".into());
    }
    let mut extra = Vec::new();
    if a.disable_redirects {
        extra.push("auto_https disable_redirects");
    }
    let mut c = globals(&a.common, &extra);
    let _ = writeln!(c, "{} {{", a.from);
    if a.internal_certs {
        c.push_str("\ttls internal\n");
    }
    if a.common.access_log {
        c.push_str("\tlog\n");
    }
    c.push_str("\treverse_proxy");
    for t in &a.to {
        let _ = write!(c, " {t}");
    }
    c.push_str(" {\n");
    if a.change_host_header {
        c.push_str("\t\theader_up Host {upstream_hostport}\n");
    }
    for (i, h) in a.header_up.iter().enumerate() {
        let (k, v) = header_flag("--header-up", i, h)?;
        let _ = writeln!(c, "\t\theader_up {} {}", quote(&k), quote(&v));
    }
    for (i, h) in a.header_down.iter().enumerate() {
        let (k, v) = header_flag("--header-down", i, h)?;
        let _ = writeln!(c, "\t\theader_down {} {}", quote(&k), quote(&v));
    }
    if a.insecure {
        c.push_str("\t\ttransport http {\n\t\t\ttls_insecure_skip_verify\n\t\t}\n");
    }
    c.push_str("\t}\n}\n");
    Ok(c)
}

/// The config, and the address it serves (for the announcement).
fn file_server_config(a: &FileServerArgs) -> Result<(String, String), String> {
    if a.templates {
        return Err(
            "--templates: template rendering is not supported yet (the `templates` directive is refused too)"
                .into(),
        );
    }
    let root = match &a.root {
        Some(r) => r.clone(),
        None => std::env::current_dir().map_err(|e| format!("no current directory: {e}"))?,
    };
    if !root.is_dir() {
        return Err(format!("--root {}: not a directory", root.display()));
    }
    let root = std::path::absolute(&root).unwrap_or(root);
    let (address, bind) = match (&a.domain, &a.listen) {
        (None, None) => ("http://:80".to_string(), None),
        (Some(d), None) => (d.clone(), None),
        (domain, Some(l)) => {
            let (host, port) = split_listen(l)?;
            let address = match domain {
                Some(d) => format!("{d}:{port}"),
                None => format!("http://:{port}"),
            };
            (address, (!host.is_empty()).then(|| host.to_string()))
        }
    };
    let mut c = globals(&a.common, &[]);
    let _ = writeln!(c, "{address} {{");
    if let Some(b) = &bind {
        let _ = writeln!(c, "\tbind {b}");
    }
    if a.common.access_log {
        c.push_str("\tlog\n");
    }
    let _ = writeln!(c, "\troot * {}", quote(&root.to_string_lossy()));
    c.push_str("\tfile_server");
    if a.browse {
        c.push_str(" browse");
    }
    match &a.precompressed {
        None => c.push('\n'),
        Some(list) => {
            c.push_str(" {\n\t\tprecompressed");
            for e in list {
                let _ = write!(c, " {}", quote(e));
            }
            c.push_str("\n\t}\n");
        }
    }
    c.push_str("}\n");
    Ok((c, address))
}

/// `host:port` (host optional) of a --listen flag; the port may be a range `a-b`.
fn split_listen(l: &str) -> Result<(&str, &str), String> {
    let (host, port) = match l.rsplit_once(':') {
        Some((h, p)) => (h.trim_start_matches('[').trim_end_matches(']'), p),
        None => ("", l),
    };
    if port.is_empty() {
        return Err(format!("--listen {l}: no port"));
    }
    Ok((host, port))
}

/// The config, and the addresses served.
fn respond_config(a: &RespondArgs, body: &str) -> Result<(String, Vec<String>), String> {
    if !(100..=999).contains(&a.status) {
        return Err(format!("--status {}: not a status code", a.status));
    }
    let (host, ports) = split_listen(&a.listen)?;
    let bad_port = || format!("--listen {}: bad port {ports:?}", a.listen);
    let (first, last) = match ports.split_once('-') {
        Some((x, y)) => (
            x.parse::<u16>().map_err(|_| bad_port())?,
            y.parse::<u16>().map_err(|_| bad_port())?,
        ),
        None => {
            let p = ports.parse::<u16>().map_err(|_| bad_port())?;
            (p, p)
        }
    };
    if last < first || last - first >= 100 {
        return Err(format!(
            "--listen {}: a port range goes up and spans at most 100 ports",
            a.listen
        ));
    }
    let ip = match host {
        "" => None,
        "localhost" => Some("127.0.0.1".to_string()),
        h => Some(h.to_string()),
    };
    let ports: Vec<u16> = if first == 0 {
        vec![free_port(ip.as_deref().unwrap_or("0.0.0.0"))?]
    } else {
        (first..=last).collect()
    };
    let shown = ip.as_deref().unwrap_or("0.0.0.0");
    let addresses = ports.iter().map(|p| format!("{shown}:{p}")).collect();
    let mut c = globals(&a.common, &[]);
    let sites: Vec<String> = ports.iter().map(|p| format!("http://:{p}")).collect();
    let _ = writeln!(c, "{} {{", sites.join(", "));
    if let Some(ip) = &ip {
        let _ = writeln!(c, "\tbind {ip}");
    }
    if a.common.access_log {
        c.push_str("\tlog\n");
    }
    for (i, h) in a.headers.iter().enumerate() {
        let (k, v) = header_flag("--header", i, h)?;
        let _ = writeln!(c, "\theader {} {}", quote(&k), quote(&v));
    }
    let _ = writeln!(c, "\trespond {} {}", quote(body), a.status);
    c.push_str("}\n");
    Ok((c, addresses))
}

/// A port nobody listens on now (the kernel's choice).
fn free_port(ip: &str) -> Result<u16, String> {
    std::net::TcpListener::bind((ip, 0))
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(|e| format!("cannot find a free port on {ip}: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn valid(text: &str) {
        if let Err(e) = dwaar_config::load_str("t", None, text, &|_| None) {
            panic!("{text}\n{e}");
        }
    }

    fn common() -> CommonArgs {
        CommonArgs {
            access_log: true,
            debug: true,
        }
    }

    #[test]
    fn reverse_proxy_flags_become_a_valid_config() {
        let a = ReverseProxyArgs {
            from: "example.test".into(),
            to: vec![
                "https://127.0.0.1:9443".into(),
                "https://127.0.0.1:9444".into(),
            ],
            change_host_header: true,
            insecure: true,
            internal_certs: true,
            disable_redirects: true,
            header_up: vec!["X-A: \"quoted\" \\ value".into()],
            header_down: vec!["X-B: b".into()],
            common: common(),
        };
        let text = reverse_proxy_config(&a).unwrap_or_else(|e| panic!("{e}"));
        valid(&text);
        assert!(
            text.contains("header_up \"X-A\" \"\\\"quoted\\\" \\\\ value\""),
            "{text}"
        );
        assert!(text.contains("tls internal") && text.contains("tls_insecure_skip_verify"));
    }

    #[test]
    fn reverse_proxy_refuses_flags_that_cannot_apply() {
        let mut a = ReverseProxyArgs {
            from: ":8080".into(),
            to: vec!["127.0.0.1:9000".into()],
            change_host_header: false,
            insecure: false,
            internal_certs: true,
            disable_redirects: false,
            header_up: vec![],
            header_down: vec![],
            common: common(),
        };
        assert!(
            reverse_proxy_config(&a).is_err(),
            "internal certs need a host"
        );
        a.internal_certs = false;
        a.insecure = true;
        assert!(reverse_proxy_config(&a).is_err(), "insecure needs https");
        a.insecure = false;
        a.header_up = vec!["NoColon".into()];
        assert!(reverse_proxy_config(&a).is_err());
        a.header_up.clear();
        a.from = "localhost:8080/api".into();
        assert!(reverse_proxy_config(&a).is_err(), "paths refused");
    }

    #[test]
    fn file_server_and_respond_configs_are_valid() {
        let a = FileServerArgs {
            domain: None,
            root: Some(std::env::temp_dir()),
            listen: Some("127.0.0.1:8123".into()),
            browse: true,
            templates: false,
            precompressed: Some(vec!["br".into(), "gzip".into()]),
            common: common(),
        };
        let (text, at) = file_server_config(&a).unwrap_or_else(|e| panic!("{e}"));
        valid(&text);
        assert_eq!(at, "http://:8123");
        let r = RespondArgs {
            body_arg: None,
            body: None,
            status: 201,
            headers: vec!["X-A: 1".into()],
            listen: "127.0.0.1:8200-8202".into(),
            common: common(),
        };
        let (text, addrs) = respond_config(&r, "hi \"there\"\n").unwrap_or_else(|e| panic!("{e}"));
        valid(&text);
        assert_eq!(addrs.len(), 3);
    }

    #[test]
    fn host_of_addresses() {
        assert_eq!(host_of("localhost"), "localhost");
        assert_eq!(host_of(":8080"), "");
        assert_eq!(host_of("https://a.test:8443"), "a.test");
        assert_eq!(host_of("[::1]:80"), "::1");
    }
}
