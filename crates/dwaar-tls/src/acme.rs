//! Obtaining a certificate from an ACME CA (RFC 8555) with `instant-acme`.
//!
//! One call of [`obtain`] is one attempt: account (created once and kept in storage),
//! order, one challenge per authorisation (HTTP-01 or TLS-ALPN-01, answered by Dwaar's
//! own listeners through the [`ChallengeBoard`]), finalisation with a CSR for a fresh
//! P-256 key, download. `instant-acme` resends requests rejected with `badNonce`;
//! the manager retries whole attempts with back-off. Failures carry the CA's problem
//! document (type, detail, subproblems) in their text.

use crate::certs::Cert;
use crate::challenge::ChallengeBoard;
use crate::plan::AcmeSpec;
use crate::storage::{safe_name, Secrecy, Storage};
use bytes::Bytes;
use instant_acme::{
    Account, AccountCredentials, AuthorizationStatus, BodyWrapper, ChallengeType, Identifier,
    NewAccount, NewOrder, OrderStatus, RetryPolicy,
};
use std::time::Duration;

/// Which challenge an attempt prefers when the CA offers both.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Prefer {
    Http01,
    TlsAlpn01,
}

/// Where a name's certificate lives in storage.
pub fn cert_paths(spec: &AcmeSpec, name: &str) -> (String, String) {
    let n = safe_name(name);
    let base = format!("certificates/{}/{n}/{n}", spec.key());
    (format!("{base}.crt"), format!("{base}.key"))
}

/// Loads a stored certificate for `name`, if there is one that parses.
pub fn load_stored(storage: &Storage, spec: &AcmeSpec, name: &str) -> Option<Cert> {
    let (crt, key) = cert_paths(spec, name);
    let chain = String::from_utf8(storage.read(&crt)?).ok()?;
    let key = String::from_utf8(storage.read(&key)?).ok()?;
    match Cert::from_pem(&chain, &key) {
        Ok(c) => Some(c),
        Err(e) => {
            tracing::warn!(name, "ignoring the stored certificate: {e}");
            None
        }
    }
}

fn http_client(spec: &AcmeSpec) -> Result<Box<dyn instant_acme::HttpClient>, String> {
    let client: hyper_util::client::legacy::Client<_, BodyWrapper<Bytes>> =
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
            .build(crate::https::connector(spec.ca_root.as_deref())?);
    Ok(Box::new(crate::acme_chains::Recording(client)))
}

/// Where the account for `spec` is stored.
fn account_path(spec: &AcmeSpec) -> String {
    let who = spec
        .email
        .as_deref()
        .map(safe_name)
        .unwrap_or_else(|| "default".into());
    // An account bound to an external account is another account.
    let bound = spec
        .eab
        .as_ref()
        .map(|e| format!("-eab-{}", safe_name(&e.key_id)))
        .unwrap_or_default();
    format!("acme/{}/account-{who}{bound}.json", spec.key())
}

/// The ACME account for `spec`, created on first use and kept in storage.
pub async fn account(spec: &AcmeSpec, storage: &Storage) -> Result<Account, String> {
    let rel = account_path(spec);
    if let Some(data) = storage.read(&rel) {
        match serde_json::from_slice::<AccountCredentials>(&data) {
            Ok(creds) => {
                return Account::builder_with_http(http_client(spec)?)
                    .from_credentials(creds)
                    .await
                    .map_err(|e| format!("cannot use the stored ACME account: {e}"));
            }
            Err(e) => tracing::warn!(path = rel, "ignoring an unreadable ACME account: {e}"),
        }
    }
    let contact = spec.email.as_ref().map(|e| format!("mailto:{e}"));
    let contacts: Vec<&str> = contact.iter().map(|c| c.as_str()).collect();
    let binding = match &spec.eab {
        Some(e) => {
            use base64::Engine;
            let key = base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(e.mac_key.trim_end_matches('='))
                .map_err(|_| format!("EAB key '{}': the MAC key is not base64url", e.key_id))?;
            Some(instant_acme::ExternalAccountKey::new(
                e.key_id.clone(),
                &key,
            ))
        }
        None => None,
    };
    let (account, creds) = Account::builder_with_http(http_client(spec)?)
        .create(
            &NewAccount {
                contact: &contacts,
                terms_of_service_agreed: true,
                only_return_existing: false,
            },
            spec.dir.clone(),
            binding.as_ref(),
        )
        .await
        .map_err(|e| format!("cannot create an ACME account at {}: {e}", spec.dir))?;
    let json = serde_json::to_vec(&creds).map_err(|e| e.to_string())?;
    storage.write(&rel, &json, Secrecy::Secret)?;
    tracing::info!(ca = spec.dir, "created an ACME account");
    Ok(account)
}

/// One attempt at a certificate for `name`. The certificate is stored before it is
/// returned.
pub async fn obtain(
    account: &Account,
    spec: &AcmeSpec,
    name: &str,
    key_type: crate::ca::KeyType,
    prefer: Prefer,
    board: &ChallengeBoard,
    storage: &Storage,
) -> Result<Cert, String> {
    let id = match name.parse::<std::net::IpAddr>() {
        Ok(ip) => Identifier::Ip(ip),
        Err(_) => Identifier::Dns(name.to_string()),
    };
    let ids = [id];
    let mut order = account
        .new_order(&NewOrder::new(&ids))
        .await
        .map_err(|e| format!("new order: {e}"))?;
    let mut published: Vec<(ChallengeType, String)> = Vec::new();
    let dns01 = match &spec.dns {
        Some(p) => Some(crate::dns::Dns01::new(p, &spec.dns_options)?),
        None => None,
    };
    let mut records: Vec<crate::dns::TxtRecord> = Vec::new();
    let result = async {
        if let Some(dns) = &dns01 {
            answer_dns01(&mut order, dns, name, &mut records).await?;
        }
        let mut authzs = order.authorizations();
        while let Some(a) = authzs.next().await {
            let mut authz = a.map_err(|e| format!("authorization: {e}"))?;
            if authz.status == AuthorizationStatus::Valid || dns01.is_some() {
                continue;
            }
            let offered: Vec<ChallengeType> =
                authz.challenges.iter().map(|c| c.r#type.clone()).collect();
            let mut order_of = vec![ChallengeType::Http01, ChallengeType::TlsAlpn01];
            if prefer == Prefer::TlsAlpn01 {
                order_of.reverse();
            }
            let ty = order_of
                .into_iter()
                .filter(|t| match t {
                    ChallengeType::Http01 => spec.http01,
                    ChallengeType::TlsAlpn01 => spec.tls_alpn01,
                    _ => false,
                })
                .find(|t| offered.contains(t))
                .ok_or_else(|| {
                    format!("the CA offers no challenge Dwaar can answer for {name}: {offered:?}")
                })?;
            let mut ch = authz
                .challenge(ty.clone())
                .ok_or("the chosen challenge vanished")?;
            let ka = ch.key_authorization();
            match ty {
                ChallengeType::Http01 => {
                    board.put_http(&ch.token, ka.as_str());
                    published.push((ty, ch.token.clone()));
                }
                _ => {
                    let (cert, key) = alpn_cert(name, ka.digest().as_ref())?;
                    board.put_tls_alpn(name, &cert, &key)?;
                    published.push((ty, name.to_string()));
                }
            }
            tracing::info!(name, challenge = ?published.last().map(|p| &p.0), "ACME challenge ready");
            ch.set_ready()
                .await
                .map_err(|e| format!("challenge ready: {e}"))?;
        }
        let poll = RetryPolicy::new()
            .initial_delay(Duration::from_millis(250))
            .backoff(1.5)
            .timeout(Duration::from_secs(90));
        let status = order
            .poll_ready(&poll)
            .await
            .map_err(|e| format!("waiting for validation: {e}"))?;
        if status != OrderStatus::Ready {
            return Err(format!(
                "validation failed ({status:?}): {}",
                failure_details(&mut order).await
            ));
        }
        let key = key_type.generate()?;
        let mut params =
            rcgen::CertificateParams::new(vec![name.to_string()]).map_err(|e| e.to_string())?;
        params.distinguished_name = rcgen::DistinguishedName::new();
        let csr = params
            .serialize_request(&key)
            .map_err(|e| format!("cannot build the CSR: {e}"))?;
        order
            .finalize_csr(csr.der())
            .await
            .map_err(|e| format!("finalize: {e}"))?;
        let chain = order
            .poll_certificate(&poll)
            .await
            .map_err(|e| format!("download: {e}"))?;
        let chain = match &spec.preferred_chains {
            Some(prefs) => prefer_chain(prefs, chain, &mut order, account, spec, storage).await,
            None => chain,
        };
        let key_pem = key.serialize_pem();
        let cert = Cert::from_pem(&chain, &key_pem)?;
        let (crt_rel, key_rel) = cert_paths(spec, name);
        storage.write(&key_rel, key_pem.as_bytes(), Secrecy::Secret)?;
        storage.write(&crt_rel, chain.as_bytes(), Secrecy::Public)?;
        Ok(cert)
    }
    .await;
    for (ty, k) in published {
        match ty {
            ChallengeType::Http01 => board.remove_http(&k),
            _ => board.remove_tls_alpn(&k),
        }
    }
    if let Some(dns) = &dns01 {
        for r in &records {
            dns.cleanup(r).await;
        }
    }
    result
}

/// DNS-01 for every pending authorisation of `order`: all TXT records are published
/// (each kept in `records` for removal), their propagation awaited, then the CA told.
async fn answer_dns01(
    order: &mut instant_acme::Order,
    dns: &crate::dns::Dns01,
    name: &str,
    records: &mut Vec<crate::dns::TxtRecord>,
) -> Result<(), String> {
    let mut ready = Vec::new();
    let mut authzs = order.authorizations();
    while let Some(a) = authzs.next().await {
        let mut authz = a.map_err(|e| format!("authorization: {e}"))?;
        if authz.status == AuthorizationStatus::Valid {
            continue;
        }
        let offered: Vec<ChallengeType> =
            authz.challenges.iter().map(|c| c.r#type.clone()).collect();
        let ch = authz
            .challenge(ChallengeType::Dns01)
            .ok_or_else(|| format!("the CA offers no DNS-01 challenge for {name}: {offered:?}"))?;
        let domain = match ch.identifier().identifier {
            Identifier::Dns(d) => d.clone(),
            other => return Err(format!("DNS-01 cannot validate {other:?}")),
        };
        let value = ch.key_authorization().dns_value();
        records.push(dns.present(&domain, &value).await?);
        ready.push(ch.url.clone());
    }
    dns.wait(records).await?;
    let mut authzs = order.authorizations();
    while let Some(a) = authzs.next().await {
        let mut authz = a.map_err(|e| format!("authorization: {e}"))?;
        let Some(mut ch) = authz.challenge(ChallengeType::Dns01) else {
            continue;
        };
        if ready.contains(&ch.url) {
            tracing::info!(name, "ACME DNS-01 challenge ready");
            ch.set_ready()
                .await
                .map_err(|e| format!("challenge ready: {e}"))?;
        }
    }
    Ok(())
}

/// The chain `prefs` choose among the CA's default and its alternates (the default
/// when fetching alternates fails: a usable certificate beats none).
async fn prefer_chain(
    prefs: &dwaar_config::model::PreferredChains,
    default: String,
    order: &mut instant_acme::Order,
    account: &Account,
    spec: &AcmeSpec,
    storage: &Storage,
) -> String {
    let Some(cert_url) = order.state().certificate.clone() else {
        return default;
    };
    let key = storage
        .read(&account_path(spec))
        .and_then(|d| serde_json::from_slice::<serde_json::Value>(&d).ok())
        .and_then(|v| v["key_pkcs8"].as_str().map(str::to_string))
        .and_then(|k| {
            use base64::Engine;
            base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(k)
                .ok()
        });
    let Some(key) = key else {
        tracing::warn!("preferred_chains: the account key is not in storage");
        return default;
    };
    let client = match crate::https::Client::new(spec.ca_root.as_deref()) {
        Ok(c) => c,
        Err(e) => {
            tracing::warn!("preferred_chains: {e}");
            return default;
        }
    };
    match crate::acme_chains::preferred(prefs, &default, &cert_url, account.id(), &key, &client)
        .await
    {
        Ok(Some(chain)) => {
            tracing::info!("using an alternate certificate chain (preferred_chains)");
            chain
        }
        Ok(None) => default,
        Err(e) => {
            tracing::warn!("preferred_chains: cannot fetch the alternate chains: {e}");
            default
        }
    }
}

/// The problems the CA reported on the order's challenges.
async fn failure_details(order: &mut instant_acme::Order) -> String {
    if let Some(p) = &order.state().error {
        return p.to_string();
    }
    let mut out = Vec::new();
    let mut authzs = order.authorizations();
    while let Some(Ok(a)) = authzs.next().await {
        for c in &a.challenges {
            if let Some(e) = &c.error {
                out.push(format!("{:?}: {e}", c.r#type));
            }
        }
    }
    if out.is_empty() {
        "the CA gave no reason".into()
    } else {
        out.join("; ")
    }
}

/// A self-signed TLS-ALPN-01 certificate (RFC 8737) for `name`: PEM cert and key.
pub fn alpn_cert(name: &str, digest: &[u8]) -> Result<(String, String), String> {
    let key = rcgen::KeyPair::generate().map_err(|e| e.to_string())?;
    let mut p = rcgen::CertificateParams::new(vec![name.to_string()]).map_err(|e| e.to_string())?;
    p.custom_extensions = vec![rcgen::CustomExtension::new_acme_identifier(digest)];
    let cert = p.self_signed(&key).map_err(|e| e.to_string())?;
    Ok((cert.pem(), key.serialize_pem()))
}

/// The CA's suggested renewal time (ACME Renewal Information, RFC 9773), when the CA
/// offers it. `None` when it does not or the certificate cannot be identified.
pub async fn suggested_renewal(account: &Account, cert: &Cert) -> Option<std::time::SystemTime> {
    let leaf = cert.key.cert.first()?;
    let id = instant_acme::CertificateIdentifier::try_from(leaf).ok()?;
    let (info, _retry) = account.renewal_info(&id).await.ok()?;
    let start = info.suggested_window.start.unix_timestamp();
    let end = info.suggested_window.end.unix_timestamp();
    // A random moment inside the window spreads renewals out, as RFC 9773 asks.
    let span = (end - start).max(0) as u64;
    let offset = if span > 0 {
        rand::random::<u64>() % span
    } else {
        0
    };
    Some(std::time::UNIX_EPOCH + Duration::from_secs(start.max(0) as u64 + offset))
}
