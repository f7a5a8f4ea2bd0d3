//! Let's Encrypt's test CA (`pebble`) and its DNS helper (`pebble-challtestsrv`), run
//! on 127.0.0.1 for ACME end-to-end tests.
//!
//! challtestsrv answers every name with 127.0.0.1, so Pebble validates challenges
//! against Dwaar's own listeners: its `httpPort`/`tlsPort` are the ports the test gives
//! Dwaar as `http_port`/`https_port`. Pebble keeps its default behaviour otherwise,
//! including rejecting 5% of nonces. Both processes are killed (by PID) on drop.

use crate::origin::TestCa;
use crate::{free_port, wait_until};
use std::process::{Child, Command};
use std::time::Duration;

pub struct Pebble {
    pebble: Child,
    /// `pebble-challtestsrv`, unless the test brings its own DNS server.
    chall: Option<Child>,
    /// Signs Pebble's own HTTPS listener: the `acme_ca_root` to configure.
    pub https_ca: TestCa,
    pub directory: String,
    pub mgmt_port: u16,
    pub dir: tempfile::TempDir,
}

/// Whether the binaries exist; with `DWAAR_REQUIRE_E2E=1` their absence is a failure.
pub fn available() -> bool {
    crate::have_tools(&["pebble", "pebble-challtestsrv"])
}

impl Pebble {
    /// Starts Pebble validating against `http_port` and `tls_port`, issuing
    /// certificates valid for `validity` (Pebble's default of 5 years when `None`),
    /// refusing names in `blocked`.
    pub fn start(
        http_port: u16,
        tls_port: u16,
        validity: Option<Duration>,
        blocked: &[&str],
    ) -> Pebble {
        Self::start_opts(http_port, tls_port, validity, blocked, None, None, 0)
    }

    /// Like [`Pebble::start`], offering each certificate under `extra` more chains,
    /// to other roots ([`Pebble::root`] `1..=extra`).
    pub fn start_with_alternate_roots(http_port: u16, tls_port: u16, extra: usize) -> Pebble {
        Self::start_opts(http_port, tls_port, None, &[], None, None, extra)
    }

    /// Starts Pebble resolving names (DNS-01 TXT records included) through the DNS
    /// server at `dns` (`ip:port`), such as a test's BIND.
    pub fn start_with_dns(dns: &str) -> Pebble {
        let (http, tls) = (crate::free_port(), crate::free_port());
        Self::start_opts(http, tls, None, &[], None, Some(dns), 0)
    }

    /// Like [`Pebble::start`], requiring an External Account Binding with key `kid` and
    /// HMAC key `mac_key` (base64url) for new accounts.
    pub fn start_with_eab(http_port: u16, tls_port: u16, kid: &str, mac_key: &str) -> Pebble {
        Self::start_opts(
            http_port,
            tls_port,
            None,
            &[],
            Some((kid, mac_key)),
            None,
            0,
        )
    }

    fn start_opts(
        http_port: u16,
        tls_port: u16,
        validity: Option<Duration>,
        blocked: &[&str],
        eab: Option<(&str, &str)>,
        dns_server: Option<&str>,
        alternate_roots: usize,
    ) -> Pebble {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let https_ca = TestCa::new();
        let (listen, mgmt, dns, chall_mgmt) = (free_port(), free_port(), free_port(), free_port());
        let mut cfg = serde_json_lite(&[
            ("listenAddress", format!("\"127.0.0.1:{listen}\"")),
            ("managementListenAddress", format!("\"127.0.0.1:{mgmt}\"")),
            (
                "certificate",
                format!("{:?}", https_ca.cert_pem.display().to_string()),
            ),
            (
                "privateKey",
                format!("{:?}", https_ca.key_pem.display().to_string()),
            ),
            ("httpPort", http_port.to_string()),
            ("tlsPort", tls_port.to_string()),
            ("ocspResponderURL", "\"\"".into()),
            ("externalAccountBindingRequired", eab.is_some().to_string()),
            (
                "externalAccountMACKeys",
                match eab {
                    Some((kid, key)) => format!("{{{kid:?}:{key:?}}}"),
                    None => "{}".into(),
                },
            ),
            (
                "domainBlocklist",
                format!(
                    "[{}]",
                    blocked
                        .iter()
                        .map(|b| format!("{b:?}"))
                        .collect::<Vec<_>>()
                        .join(",")
                ),
            ),
        ]);
        if let Some(v) = validity {
            cfg = cfg.replacen(
                '{',
                &format!("{{\"certificateValidityPeriod\":{},", v.as_secs()),
                1,
            );
        }
        let path = dir.path().join("pebble.json");
        std::fs::write(&path, format!("{{\"pebble\":{cfg}}}")).unwrap_or_else(|e| panic!("{e}"));
        let log = |name: &str| {
            std::fs::File::create(dir.path().join(name)).unwrap_or_else(|e| panic!("{e}"))
        };
        let chall = match dns_server {
            Some(_) => None,
            None => Some(
                Command::new("pebble-challtestsrv")
                    .args(["-defaultIPv4", "127.0.0.1", "-defaultIPv6", ""])
                    .args(["-dns01", &format!("127.0.0.1:{dns}")])
                    .args(["-http01", "", "-https01", "", "-tlsalpn01", ""])
                    .args(["-management", &format!("127.0.0.1:{chall_mgmt}")])
                    .stdout(log("chall.log"))
                    .stderr(log("chall.err"))
                    .spawn()
                    .unwrap_or_else(|e| panic!("pebble-challtestsrv: {e}")),
            ),
        };
        let dns_server = dns_server
            .map(str::to_string)
            .unwrap_or_else(|| format!("127.0.0.1:{dns}"));
        let pebble = Command::new("pebble")
            .arg("-config")
            .arg(&path)
            .args(["-dnsserver", &dns_server])
            .env("PEBBLE_VA_NOSLEEP", "1")
            .env("PEBBLE_ALTERNATE_ROOTS", alternate_roots.to_string())
            .stdout(log("pebble.log"))
            .stderr(log("pebble.err"))
            .spawn()
            .unwrap_or_else(|e| panic!("pebble: {e}"));
        let p = Pebble {
            pebble,
            chall,
            https_ca,
            directory: format!("https://127.0.0.1:{listen}/dir"),
            mgmt_port: mgmt,
            dir,
        };
        let up = wait_until(Duration::from_secs(20), || {
            [listen, mgmt]
                .iter()
                .all(|port| std::net::TcpStream::connect(("127.0.0.1", *port)).is_ok())
        });
        assert!(up, "pebble did not start:\n{}", p.log());
        p
    }

    /// The root that signs issued certificates, from Pebble's management endpoint.
    pub fn issuing_root(&self) -> String {
        self.root(0)
    }

    /// Root `n` (0: the default chain's; more with alternate roots).
    pub fn root(&self, n: usize) -> String {
        let opts = crate::tls::TlsOpts::trusting(
            std::fs::read(&self.https_ca.ca_pem).unwrap_or_else(|e| panic!("{e}")),
        );
        let path = format!("/roots/{n}");
        let r = crate::tls::get(self.mgmt_port, "localhost", "localhost", &path, &opts)
            .unwrap_or_else(|e| panic!("pebble {path}: {e}"));
        assert_eq!(r.status, 200, "pebble {path}: {}", r.body);
        r.body
    }

    pub fn log(&self) -> String {
        let read = |n: &str| std::fs::read_to_string(self.dir.path().join(n)).unwrap_or_default();
        format!("{}{}", read("pebble.log"), read("pebble.err"))
    }
}

impl Drop for Pebble {
    fn drop(&mut self) {
        let _ = self.pebble.kill();
        let _ = self.pebble.wait();
        if let Some(c) = &mut self.chall {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// `{"k":v,...}` from pre-encoded values (the testkit has no JSON dependency).
fn serde_json_lite(fields: &[(&str, String)]) -> String {
    let body: Vec<String> = fields.iter().map(|(k, v)| format!("\"{k}\":{v}")).collect();
    format!("{{{}}}", body.join(","))
}
