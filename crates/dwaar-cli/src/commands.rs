//! One function per subcommand; each returns the process exit code.

use dwaar_config::{load_file, resolve_config_path, Loaded};
use std::path::Path;

pub(crate) fn load(flag: Option<&Path>) -> Result<(std::path::PathBuf, Loaded), i32> {
    let path = resolve_config_path(flag).map_err(|e| {
        eprintln!("error: {e}");
        1
    })?;
    match load_file(&path) {
        Ok(l) => {
            if !l.warnings.is_empty() {
                eprint!("{}", l.render_warnings());
            }
            Ok((path, l))
        }
        Err(e) => {
            eprint!("{e}");
            let n = e.error_count();
            eprintln!(
                "\n{} error{} in {}",
                n,
                if n == 1 { "" } else { "s" },
                path.display()
            );
            Err(1)
        }
    }
}

pub fn validate(flag: Option<&Path>) -> i32 {
    match load(flag) {
        Ok((path, l)) => {
            if let Err(e) = dwaar_tls::plan::Plan::new(&l.config) {
                eprintln!("error: {e}");
                return 1;
            }
            let routes: usize = l.config.sites.iter().map(|s| s.routes.len()).sum();
            println!(
                "{}: valid ({} site{}, {} route{}, {} file{})",
                path.display(),
                l.config.sites.len(),
                if l.config.sites.len() == 1 { "" } else { "s" },
                routes,
                if routes == 1 { "" } else { "s" },
                l.sources.files().len(),
                if l.sources.files().len() == 1 {
                    ""
                } else {
                    "s"
                },
            );
            0
        }
        Err(c) => c,
    }
}

/// `dwaar push`: a config that fails validation is refused before anything is
/// published; a valid one is stored (as the adapted JSON model, imports and `{$VAR}`s
/// resolved here) under the fleet's `config/current` with a new version and announced;
/// the instances' reports (`ok` or their error) are printed as they arrive.
/// Exit status: 0 when every reporting instance loaded it, 2 when one did not, 1 when
/// nothing was published.
pub fn push(flag: Option<&Path>, wait_secs: u64) -> i32 {
    use dwaar_core::dwaar_fleet::{self, bus, redis};
    let (path, l) = match load(flag) {
        Ok(x) => x,
        Err(c) => {
            eprintln!("error: not published: the config does not validate");
            return c;
        }
    };
    if let Err(e) = dwaar_tls::plan::Plan::new(&l.config) {
        eprintln!("error: {e}\nerror: not published");
        return 1;
    }
    let Some(r) = &l.config.global.tls.redis else {
        eprintln!(
            "error: {}: no 'storage redis' in the global options; push publishes through the fleet's Redis",
            path.display()
        );
        return 1;
    };
    let fleet = match dwaar_fleet::fleet(r) {
        Ok(f) => f,
        Err(e) => {
            eprintln!("error: {e}");
            return 1;
        }
    };
    let json = match serde_json::to_string(&l.config) {
        Ok(j) => j,
        Err(e) => {
            eprintln!("error: {e}");
            return 1;
        }
    };
    let published = fleet.with_sync(|c| {
        let version: u64 = redis::cmd("INCR")
            .arg(fleet.key("config/version"))
            .query(c)?;
        redis::cmd("SET")
            .arg(fleet.key("config/current"))
            .arg(format!("{version}\n{json}"))
            .query::<()>(c)?;
        Ok(version)
    });
    let version = match published {
        Ok(v) => v,
        Err(e) => {
            eprintln!("error: not published: {e}");
            return 1;
        }
    };
    bus::publish(&fleet, "config", &version.to_string());
    println!("published {} as version {version}", path.display());
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(wait_secs);
    let mut printed = std::collections::HashSet::new();
    let mut failed = false;
    loop {
        let reports: std::collections::HashMap<String, String> = fleet
            .with_sync(|c| {
                redis::cmd("HGETALL")
                    .arg(fleet.key("config/reports"))
                    .query(c)
            })
            .unwrap_or_default();
        let prefix = format!("{version} ");
        for (instance, report) in &reports {
            if let Some(rest) = report.strip_prefix(&prefix) {
                if printed.insert(instance.clone()) {
                    println!("{instance}: {rest}");
                    failed |= rest != "ok";
                }
            }
        }
        if std::time::Instant::now() >= deadline {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(250));
    }
    if printed.is_empty() {
        println!("no instance reported within {wait_secs}s");
    }
    if failed {
        2
    } else {
        0
    }
}

pub fn adapt(flag: Option<&Path>, pretty: bool) -> i32 {
    match load(flag) {
        Ok((_, l)) => {
            let json = if pretty {
                serde_json::to_string_pretty(&l.config)
            } else {
                serde_json::to_string(&l.config)
            };
            match json {
                Ok(j) => {
                    println!("{j}");
                    0
                }
                Err(e) => {
                    eprintln!("error: cannot encode config: {e}");
                    1
                }
            }
        }
        Err(c) => c,
    }
}

pub fn fmt(file: Option<&Path>, overwrite: bool, check: bool) -> i32 {
    let path = match resolve_config_path(file) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("error: {e}");
            return 1;
        }
    };
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("error: cannot read {}: {e}", path.display());
            return 1;
        }
    };
    let formatted = match dwaar_config::fmt::format(&text) {
        Ok(f) => f,
        Err(diags) => {
            let mut sm = dwaar_config::source::SourceMap::new();
            sm.add(dwaar_config::source::SourceFile::new(
                path.display().to_string(),
                Some(path.clone()),
                text,
            ));
            eprint!("{}", dwaar_config::diag::render_all(&diags, &sm));
            return 1;
        }
    };
    if check {
        if formatted != text {
            eprintln!(
                "{} is not formatted (run: dwaar fmt --overwrite {})",
                path.display(),
                path.display()
            );
            return 1;
        }
        return 0;
    }
    if overwrite {
        if formatted != text {
            if let Err(e) = std::fs::write(&path, &formatted) {
                eprintln!("error: cannot write {}: {e}", path.display());
                return 1;
            }
        }
        return 0;
    }
    print!("{formatted}");
    0
}

/// The admin address a CLI command talks to: `--address`, else the config's `admin`
/// option (which already honours `$DWAAR_ADMIN`), else the default.
fn admin_address(address: Option<&str>, config: Option<&Path>) -> Result<String, i32> {
    if let Some(a) = address {
        return Ok(a.to_string());
    }
    let from_config = resolve_config_path(config)
        .ok()
        .and_then(|p| load_file(&p).ok())
        .map(|l| l.config.global.admin.listen);
    match from_config {
        Some(Some(a)) => Ok(a),
        Some(None) => {
            eprintln!("error: the admin API is off in the config ('admin off'); send SIGUSR1 to reload instead");
            Err(1)
        }
        None => Ok(std::env::var("DWAAR_ADMIN")
            .ok()
            .filter(|a| !a.is_empty() && a != "off")
            .unwrap_or_else(|| dwaar_config::model::DEFAULT_ADMIN_LISTEN.to_string())),
    }
}

fn report(
    reply: Result<dwaar_admin::client::Reply, String>,
    ok: impl FnOnce(&serde_json::Value),
) -> i32 {
    match reply {
        Ok(r) if r.status == 200 => {
            ok(&serde_json::from_str(&r.body).unwrap_or_default());
            0
        }
        Ok(r) => {
            let v: serde_json::Value = serde_json::from_str(&r.body).unwrap_or_default();
            match v.get("error").and_then(|e| e.as_str()) {
                Some(e) => eprint!("{}{}", e, if e.ends_with('\n') { "" } else { "\n" }),
                None => eprintln!("error: admin API answered {}: {}", r.status, r.body.trim()),
            }
            1
        }
        Err(e) => {
            eprintln!("error: {e}");
            1
        }
    }
}

/// `dwaar reload`: sends the config file to the running server.
pub fn reload(config: Option<&Path>, address: Option<&str>) -> i32 {
    let path = match resolve_config_path(config) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("error: {e}");
            return 1;
        }
    };
    let text = match std::fs::read(&path) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("error: cannot read {}: {e}", path.display());
            return 1;
        }
    };
    let addr = match admin_address(address, Some(&path)) {
        Ok(a) => a,
        Err(c) => return c,
    };
    let abs = std::path::absolute(&path).unwrap_or(path);
    let reply = dwaar_admin::client::request(
        &addr,
        "POST",
        "/load",
        Some(("text/dwaarfile", &text)),
        &[("X-Dwaar-Config-Path", abs.display().to_string())],
    );
    report(reply, |v| {
        println!(
            "config reloaded from {} ({} site{})",
            abs.display(),
            v["sites"].as_u64().unwrap_or(0),
            if v["sites"].as_u64() == Some(1) {
                ""
            } else {
                "s"
            }
        )
    })
}

/// `dwaar stop`: asks the running server to stop gracefully.
pub fn stop(config: Option<&Path>, address: Option<&str>) -> i32 {
    let addr = match admin_address(address, config) {
        Ok(a) => a,
        Err(c) => return c,
    };
    report(
        dwaar_admin::client::request(&addr, "POST", "/stop", None, &[]),
        |_| println!("dwaar is stopping"),
    )
}

/// `dwaar upgrade`: replaces the running process with the binary now on disk.
pub fn upgrade(config: Option<&Path>, address: Option<&str>) -> i32 {
    let addr = match admin_address(address, config) {
        Ok(a) => a,
        Err(c) => return c,
    };
    report(
        dwaar_admin::client::request(&addr, "POST", "/upgrade", None, &[]),
        |v| println!("upgraded: new process {}", v["pid"]),
    )
}

/// `dwaar trust`: the storage directory from `--storage`, the config, or the default.
pub fn trust(config: Option<&Path>, storage: Option<&Path>) -> i32 {
    let storage = match (storage, config) {
        (Some(s), _) => dwaar_tls::storage::Storage::new(s),
        (None, Some(_)) => match load(config) {
            Ok((_, l)) => dwaar_tls::storage::Storage::for_config(&l.config.global.tls),
            Err(c) => return c,
        },
        (None, None) => dwaar_tls::storage::Storage::from_config(None),
    };
    match dwaar_tls::trust::trust(&storage) {
        Ok(dest) => {
            println!(
                "installed the Dwaar local CA root ({}) as {}",
                dwaar_tls::trust::root_path(&storage).display(),
                dest.display()
            );
            0
        }
        Err(e) => {
            eprintln!("error: {e}");
            1
        }
    }
}

/// `dwaar untrust`.
pub fn untrust() -> i32 {
    match dwaar_tls::trust::untrust() {
        Ok(Some(p)) => {
            println!("removed {} from the system trust store", p.display());
            0
        }
        Ok(None) => {
            println!("the Dwaar local CA root was not installed");
            0
        }
        Err(e) => {
            eprintln!("error: {e}");
            1
        }
    }
}

/// `dwaar hash-password`: a bcrypt hash for `basic_auth`.
pub fn hash_password(plaintext: Option<String>, cost: u32) -> i32 {
    let password = match plaintext {
        Some(p) => p,
        None => {
            let mut line = String::new();
            if std::io::stdin().read_line(&mut line).is_err() {
                eprintln!("error: cannot read the password from stdin");
                return 1;
            }
            line.trim_end_matches(['\n', '\r']).to_string()
        }
    };
    if password.is_empty() {
        eprintln!("error: the password is empty");
        return 1;
    }
    if !(4..=31).contains(&cost) {
        eprintln!("error: bcrypt cost must be between 4 and 31");
        return 1;
    }
    match bcrypt::hash(password, cost) {
        Ok(h) => {
            println!("{h}");
            0
        }
        Err(e) => {
            eprintln!("error: {e}");
            1
        }
    }
}
