//! Acting on a response before the client sees it: response matchers (`status`,
//! `header`), `replace_status` and `handle_response` routes. A `reverse_proxy` holds a
//! set for its upstream's answers; an `intercept` holds one for whatever the handlers
//! after it write (recorded in the request context when the `intercept` runs).

use crate::route_table::RouteRule;

/// A response matcher (`@name status 5xx`, `@name header X-Accel-Redirect *`): every
/// condition must hold.
#[derive(Debug)]
pub struct ResponseMatch {
    status: Vec<String>,
    /// Lowercase field names and the values one of which must match (none: present).
    headers: Vec<(String, Vec<String>)>,
}

impl ResponseMatch {
    pub fn compile(m: &dwaar_config::model::ResponseMatcher) -> ResponseMatch {
        ResponseMatch {
            status: m.status.clone(),
            headers: m
                .headers
                .iter()
                .map(|h| (h.field.to_ascii_lowercase(), h.values.clone()))
                .collect(),
        }
    }

    pub fn matches(&self, status: u16, fields: &[(String, String)]) -> bool {
        let status_ok = self.status.is_empty()
            || self
                .status
                .iter()
                .any(|p| crate::lifecycle::attempt::status_matches(p, status));
        status_ok
            && self.headers.iter().all(|(name, values)| {
                fields.iter().any(|(k, v)| {
                    k.eq_ignore_ascii_case(name)
                        && (values.is_empty() || values.iter().any(|want| wildcard_eq(want, v)))
                })
            })
    }
}

/// `*` alone matches anything; a leading or trailing `*` matches a suffix or prefix.
fn wildcard_eq(pattern: &str, value: &str) -> bool {
    match (pattern.strip_prefix('*'), pattern.strip_suffix('*')) {
        _ if pattern == "*" => true,
        (Some(suffix), _) => value.ends_with(suffix),
        (_, Some(prefix)) => value.starts_with(prefix),
        _ => pattern == value,
    }
}

/// Compiles one `handle_response` block's routes (the route table's compiler).
pub type CompileRoutes<'a> =
    dyn FnMut(&[dwaar_config::model::Route]) -> Result<Vec<RouteRule>, String> + 'a;

/// The `replace_status` and `handle_response` rules of one `reverse_proxy` or
/// `intercept`.
#[derive(Debug, Default)]
pub struct ResponseRules {
    /// First match wins.
    pub replace_status: Vec<(Option<ResponseMatch>, u16)>,
    /// First match wins; blocks without a matcher are tried last (as in Caddy).
    pub handle_response: Vec<(Option<ResponseMatch>, Vec<RouteRule>)>,
}

impl ResponseRules {
    /// Compiles the rules; `routes` compiles one `handle_response` block's routes.
    pub fn compile(
        config: &dwaar_config::model::ResponseHandling,
        routes: &mut CompileRoutes<'_>,
    ) -> Result<ResponseRules, String> {
        let (matchers, replace, handle) = (
            &config.response_matchers,
            &config.replace_status,
            &config.handle_response,
        );
        let find = |name: &Option<String>| {
            name.as_ref().and_then(|n| {
                matchers
                    .iter()
                    .find(|m| &m.name == n)
                    .map(ResponseMatch::compile)
            })
        };
        let mut rules = ResponseRules {
            replace_status: replace
                .iter()
                .map(|r| (find(&r.matcher), r.status))
                .collect(),
            handle_response: Vec::with_capacity(handle.len()),
        };
        for h in handle {
            rules
                .handle_response
                .push((find(&h.matcher), routes(&h.routes)?));
        }
        rules.handle_response.sort_by_key(|(m, _)| m.is_none());
        Ok(rules)
    }

    /// Whether the rules can change a response (else it is relayed untouched).
    pub fn is_empty(&self) -> bool {
        self.replace_status.is_empty() && self.handle_response.is_empty()
    }

    /// The status the client sees for `status` (`replace_status`: the first rule whose
    /// matcher matches).
    pub fn shown_status(&self, status: u16, fields: &[(String, String)]) -> u16 {
        self.replace_status
            .iter()
            .find(|(m, _)| m.as_ref().is_none_or(|m| m.matches(status, fields)))
            .map_or(status, |(_, code)| *code)
    }

    /// The `handle_response` routes for a response, if a block matches it.
    pub fn routes_for(&self, status: u16, fields: &[(String, String)]) -> Option<&[RouteRule]> {
        self.handle_response
            .iter()
            .find(|(m, _)| m.as_ref().is_none_or(|m| m.matches(status, fields)))
            .map(|(_, routes)| routes.as_slice())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn matcher(status: &[&str], headers: &[(&str, &[&str])]) -> ResponseMatch {
        ResponseMatch::compile(&dwaar_config::model::ResponseMatcher {
            name: "m".into(),
            status: status.iter().map(|s| s.to_string()).collect(),
            headers: headers
                .iter()
                .map(|(f, v)| dwaar_config::model::FieldMatch {
                    field: f.to_string(),
                    values: v.iter().map(|s| s.to_string()).collect(),
                })
                .collect(),
        })
    }

    fn fields(list: &[(&str, &str)]) -> Vec<(String, String)> {
        list.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn matchers_need_every_condition() {
        let m = matcher(&["4xx", "502"], &[("X-Accel-Redirect", &["/files/*"])]);
        let accel = fields(&[("x-accel-redirect", "/files/a.txt")]);
        assert!(m.matches(404, &accel));
        assert!(m.matches(502, &accel));
        assert!(!m.matches(200, &accel));
        assert!(!m.matches(404, &fields(&[("x-accel-redirect", "/other")])));
        assert!(!m.matches(404, &[]));
    }

    #[test]
    fn replace_status_takes_the_first_match_and_unmatched_handlers_go_last() {
        let rules = ResponseRules {
            replace_status: vec![(Some(matcher(&["5xx"], &[])), 503), (None, 299)],
            handle_response: Vec::new(),
        };
        assert_eq!(rules.shown_status(502, &[]), 503);
        assert_eq!(rules.shown_status(200, &[]), 299);
        let mut rules = ResponseRules::compile(
            &dwaar_config::model::ResponseHandling {
                response_matchers: vec![dwaar_config::model::ResponseMatcher {
                    name: "err".into(),
                    status: vec!["5xx".into()],
                    headers: Vec::new(),
                }],
                replace_status: Vec::new(),
                handle_response: vec![
                    dwaar_config::model::HandleResponse {
                        matcher: None,
                        routes: Vec::new(),
                    },
                    dwaar_config::model::HandleResponse {
                        matcher: Some("err".into()),
                        routes: Vec::new(),
                    },
                ],
            },
            &mut |_| Ok(Vec::new()),
        )
        .expect("compiles");
        assert!(rules.handle_response[0].0.is_some());
        assert!(rules.routes_for(200, &[]).is_some());
        rules.handle_response.pop();
        assert!(rules.routes_for(200, &[]).is_none());
        assert!(rules.routes_for(500, &[]).is_some());
    }
}
