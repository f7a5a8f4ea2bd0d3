//! The Cloudflare DNS provider, on Cloudflare's API v4 with a bearer token: the zone is
//! found by name (`GET /zones?name=`), the TXT record created
//! (`POST /zones/{id}/dns_records`) and later deleted by looking it up by name and
//! content (`GET /zones/{id}/dns_records?type=TXT&name=&content=`, `DELETE`).

use super::TxtRecord;
use crate::https::uri_encode;
use crate::https::Client;
use serde_json::Value;

pub const API: &str = "https://api.cloudflare.com/client/v4";

pub struct Cloudflare {
    pub api_token: String,
    pub zone_token: Option<String>,
    pub endpoint: String,
    pub client: Client,
}

impl Cloudflare {
    async fn call(
        &self,
        method: &str,
        path: &str,
        token: &str,
        body: Option<Value>,
    ) -> Result<Value, String> {
        let url = format!("{}{path}", self.endpoint.trim_end_matches('/'));
        let auth = format!("Bearer {token}");
        let mut headers = vec![("authorization", auth.as_str())];
        let body = match body {
            Some(b) => {
                headers.push(("content-type", "application/json"));
                b.to_string().into_bytes()
            }
            None => Vec::new(),
        };
        let r = self.client.send(method, &url, &headers, body).await?;
        let v: Value = serde_json::from_slice(&r.body).map_err(|_| {
            format!(
                "Cloudflare {method} {path}: HTTP {}: {}",
                r.status,
                r.text()
            )
        })?;
        if r.status >= 300 || v["success"] != Value::Bool(true) {
            return Err(format!(
                "Cloudflare {method} {path}: HTTP {}: {}",
                r.status,
                v.get("errors")
                    .map(|e| e.to_string())
                    .unwrap_or_else(|| r.text())
            ));
        }
        Ok(v)
    }

    async fn zone_id(&self, zone: &str) -> Result<String, String> {
        let token = self.zone_token.as_deref().unwrap_or(&self.api_token);
        let v = self
            .call(
                "GET",
                &format!("/zones?name={}", uri_encode(zone, false)),
                token,
                None,
            )
            .await?;
        v["result"]
            .as_array()
            .and_then(|zones| zones.iter().find(|z| z["name"].as_str() == Some(zone)))
            .and_then(|z| z["id"].as_str())
            .map(str::to_string)
            .ok_or_else(|| format!("Cloudflare has no zone {zone} for this token"))
    }

    pub async fn present(&self, r: &TxtRecord) -> Result<(), String> {
        let id = self.zone_id(&r.zone).await?;
        let body = serde_json::json!({
            "type": "TXT",
            "name": r.name,
            "content": r.value,
            "ttl": r.ttl,
        });
        self.call(
            "POST",
            &format!("/zones/{id}/dns_records"),
            &self.api_token,
            Some(body),
        )
        .await?;
        Ok(())
    }

    pub async fn cleanup(&self, r: &TxtRecord) -> Result<(), String> {
        let id = self.zone_id(&r.zone).await?;
        let list = self
            .call(
                "GET",
                &format!(
                    "/zones/{id}/dns_records?type=TXT&name={}&content={}",
                    uri_encode(&r.name, false),
                    uri_encode(&r.value, false)
                ),
                &self.api_token,
                None,
            )
            .await?;
        for rec in list["result"].as_array().into_iter().flatten() {
            if rec["content"].as_str().map(|c| c.trim_matches('"')) != Some(r.value.as_str()) {
                continue;
            }
            if let Some(rid) = rec["id"].as_str() {
                self.call(
                    "DELETE",
                    &format!("/zones/{id}/dns_records/{rid}"),
                    &self.api_token,
                    None,
                )
                .await?;
            }
        }
        Ok(())
    }
}
