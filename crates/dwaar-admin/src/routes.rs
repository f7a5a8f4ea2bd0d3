//! `GET /routes`: what each site does, in evaluation order, in a compact form.

use dwaar_config::model::Config;
use serde_json::{json, Value};

pub fn describe(config: &Config) -> Value {
    let sites: Vec<Value> = config
        .sites
        .iter()
        .map(|site| {
            let addresses: Vec<String> = site
                .addresses
                .iter()
                .map(|a| {
                    format!(
                        "{}://{}:{}{}",
                        a.scheme.as_deref().unwrap_or("http"),
                        a.host,
                        a.port,
                        a.path.as_deref().unwrap_or("")
                    )
                })
                .collect();
            let routes: Vec<Value> = site
                .routes
                .iter()
                .map(|r| {
                    let handlers: Vec<Value> = r
                        .handlers
                        .iter()
                        .map(|h| {
                            serde_json::to_value(h)
                                .ok()
                                .and_then(|v| v.get("handler").cloned())
                                .unwrap_or(Value::Null)
                        })
                        .collect();
                    json!({
                        "match": serde_json::to_value(&r.matchers).unwrap_or_default(),
                        "group": r.group,
                        "handlers": handlers,
                    })
                })
                .collect();
            json!({ "addresses": addresses, "routes": routes })
        })
        .collect();
    json!({ "sites": sites })
}
