//! Rendering of MetricTemplate queries.
//!
//! Queries written for Flagger work unchanged: Flagger's Go templates call
//! niladic functions (`{{ namespace }}`) and index the variables map
//! (`{{ variables.foo }}`); both read the same in Jinja syntax, which
//! petrel renders with `minijinja`.
//!
//! # Variables
//!
//! | variable | value |
//! |---|---|
//! | `name` | the Canary's name |
//! | `namespace` | the Canary's namespace |
//! | `target` | the target workload (Deployment) name, `spec.targetRef.name` |
//! | `service` | the Service name, `spec.service.name` (defaults to `target`) |
//! | `ingress` | the Ingress name, `spec.ingressRef.name` (only when set) |
//! | `route` | the route name, `spec.routeRef.name` (only when set) |
//! | `interval` | the metric's interval as a Prometheus duration, e.g. `1m` |
//! | `variables.<key>` | the metric's `templateVariables` |
//!
//! A template that uses a variable that is not set (a typo, an unset
//! `ingress`, a missing `variables` key) is an error naming it: it never
//! renders as an empty string.

use std::collections::{BTreeMap, BTreeSet};

use minijinja::{Environment, UndefinedBehavior, Value};

/// The values a query template may use; see the [module docs](self).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct QueryVars {
    /// Canary name.
    pub name: String,
    /// Canary namespace.
    pub namespace: String,
    /// Target workload name (the canary Deployment).
    pub target: String,
    /// Service name (apex; `<service>-canary` and `<service>-primary` exist too).
    pub service: String,
    /// Ingress name, if the Canary has an `ingressRef`.
    pub ingress: Option<String>,
    /// Route name, if the Canary has a `routeRef`.
    pub route: Option<String>,
    /// Prometheus range duration such as `1m` or `30s`.
    pub interval: String,
    /// The metric's `templateVariables`.
    pub variables: BTreeMap<String, String>,
}

/// Why a query template could not be rendered.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TemplateError {
    /// The template uses variables that are not set.
    #[error("query template uses {} that {} not set: {}; available: {}", plural(.missing.len(), "variable", "variables"), if .missing.len() == 1 { "is" } else { "are" }, .missing.join(", "), .available.join(", "))]
    UndefinedVariables {
        /// The variables used but not set, e.g. `variables.region`.
        missing: Vec<String>,
        /// The variables that are set.
        available: Vec<String>,
    },
    /// The template is not valid template syntax, or failed while rendering.
    #[error("query template is invalid: {0}")]
    Syntax(String),
}

fn plural(n: usize, one: &'static str, many: &'static str) -> &'static str {
    if n == 1 { one } else { many }
}

/// Renders a MetricTemplate `query` with `vars`.
///
/// Strict: an undefined variable is an error naming it, see
/// [`TemplateError::UndefinedVariables`].
pub fn render_query(template: &str, vars: &QueryVars) -> Result<String, TemplateError> {
    let mut env = Environment::new();
    // Strict: a missing variable must fail the check, not render as "".
    env.set_undefined_behavior(UndefinedBehavior::Strict);
    // Queries are not HTML; never escape (the default callback keys on the
    // template name, set explicitly so that can never change under us).
    env.set_auto_escape_callback(|_| minijinja::AutoEscape::None);
    env.set_keep_trailing_newline(true);
    let compiled = env.template_from_str(template).map_err(|e| TemplateError::Syntax(describe(&e)))?;

    // Name every missing variable up front: minijinja's strict mode stops at
    // the first one and does not say which it was.
    let available = available_names(vars);
    let missing: Vec<String> = compiled
        .undeclared_variables(true)
        .into_iter()
        .filter(|used| !is_available(used, vars))
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    if !missing.is_empty() {
        return Err(TemplateError::UndefinedVariables { missing, available });
    }

    let mut ctx = BTreeMap::<&str, Value>::new();
    ctx.insert("name", Value::from(vars.name.as_str()));
    ctx.insert("namespace", Value::from(vars.namespace.as_str()));
    ctx.insert("target", Value::from(vars.target.as_str()));
    ctx.insert("service", Value::from(vars.service.as_str()));
    ctx.insert("interval", Value::from(vars.interval.as_str()));
    ctx.insert("variables", Value::from_serialize(&vars.variables));
    if let Some(ingress) = &vars.ingress {
        ctx.insert("ingress", Value::from(ingress.as_str()));
    }
    if let Some(route) = &vars.route {
        ctx.insert("route", Value::from(route.as_str()));
    }
    compiled.render(ctx).map_err(|e| TemplateError::Syntax(describe(&e)))
}

/// Whether a name reported by `undeclared_variables(true)` (either `x` or
/// `x.y`) is set in `vars`.
fn is_available(used: &str, vars: &QueryVars) -> bool {
    let (root, key) = match used.split_once('.') {
        Some((root, key)) => (root, Some(key)),
        None => (used, None),
    };
    match root {
        "name" | "namespace" | "target" | "service" | "interval" => true,
        "ingress" => vars.ingress.is_some(),
        "route" => vars.route.is_some(),
        // `variables` alone (e.g. `variables["a"]`) is fine; `variables.k`
        // needs key k. Lookups by expression are caught at render time.
        "variables" => key.is_none_or(|k| vars.variables.contains_key(k)),
        _ => false,
    }
}

fn available_names(vars: &QueryVars) -> Vec<String> {
    let mut names: Vec<String> =
        ["name", "namespace", "target", "service", "interval"].into_iter().map(String::from).collect();
    if vars.ingress.is_some() {
        names.push("ingress".into());
    }
    if vars.route.is_some() {
        names.push("route".into());
    }
    names.extend(vars.variables.keys().map(|k| format!("variables.{k}")));
    names
}

/// minijinja's message plus where in the template it happened.
fn describe(error: &minijinja::Error) -> String {
    match (error.detail(), error.line()) {
        (Some(detail), Some(line)) => format!("{} (line {line}): {detail}", error.kind()),
        (None, Some(line)) => format!("{} (line {line})", error.kind()),
        _ => error.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars() -> QueryVars {
        QueryVars {
            name: "podinfo".into(),
            namespace: "test".into(),
            target: "podinfo".into(),
            service: "podinfo-svc".into(),
            ingress: Some("podinfo-ing".into()),
            route: None,
            interval: "1m".into(),
            variables: BTreeMap::from([("direction".to_string(), "inbound".to_string())]),
        }
    }

    #[test]
    fn renders_flagger_style_template_unchanged() {
        // From Flagger's docs (Linkerd custom metric), with and without spaces.
        let template = r#"100 - sum(
    rate(
        response_total{
            namespace="{{ namespace }}",
            deployment=~"{{ target }}",
            classification="failure",
            direction="{{ variables.direction }}"
        }[{{ interval }}]
    )
)
/
sum(
    rate(
        response_total{
            namespace="{{namespace}}",
            deployment=~"{{target}}",
            direction="{{variables.direction}}"
        }[{{interval}}]
    )
)
* 100"#;
        let rendered = render_query(template, &vars()).unwrap();
        assert!(rendered.contains(r#"namespace="test","#));
        assert!(rendered.contains(r#"deployment=~"podinfo","#));
        assert!(rendered.contains(r#"direction="inbound""#));
        assert!(rendered.contains("}[1m]"));
        assert!(!rendered.contains("{{"));
    }

    #[test]
    fn every_documented_variable_renders() {
        let mut v = vars();
        v.route = Some("r".into());
        assert_eq!(
            render_query(
                "{{ name }}|{{ namespace }}|{{ target }}|{{ service }}|{{ ingress }}|{{ route }}|{{ interval }}|{{ variables.direction }}",
                &v
            )
            .unwrap(),
            "podinfo|test|podinfo|podinfo-svc|podinfo-ing|r|1m|inbound"
        );
    }

    #[test]
    fn no_html_escaping() {
        let mut v = vars();
        v.variables.insert("sel".into(), r#"code!~"5..",a>b&c<d"#.into());
        assert_eq!(render_query("{{ variables.sel }}", &v).unwrap(), r#"code!~"5..",a>b&c<d"#);
    }

    #[test]
    fn missing_template_variable_is_named() {
        let err = render_query("x{a=\"{{ variables.region }}\"}", &vars()).unwrap_err();
        assert_eq!(
            err,
            TemplateError::UndefinedVariables {
                missing: vec!["variables.region".into()],
                available: vec![
                    "name".into(),
                    "namespace".into(),
                    "target".into(),
                    "service".into(),
                    "interval".into(),
                    "ingress".into(),
                    "variables.direction".into()
                ],
            }
        );
        let message = err.to_string();
        assert!(message.contains("variables.region"), "{message}");
        assert!(message.contains("is not set"), "{message}");
    }

    #[test]
    fn unset_ingress_and_typos_are_errors_not_empty_strings() {
        let mut v = vars();
        v.ingress = None;
        let err = render_query("{{ ingress }} {{ namepsace }}", &v).unwrap_err();
        assert!(matches!(
            &err,
            TemplateError::UndefinedVariables { missing, .. }
                if missing == &vec!["ingress".to_string(), "namepsace".to_string()]
        ));
        assert!(err.to_string().contains("are not set"));
    }

    #[test]
    fn dynamic_lookup_of_missing_key_still_fails_at_render_time() {
        let err = render_query(r#"{{ variables["nope"] }}"#, &vars()).unwrap_err();
        assert!(matches!(err, TemplateError::Syntax(m) if m.contains("undefined")));
    }

    #[test]
    fn syntax_errors_are_reported_with_a_line() {
        let err = render_query("sum(\n{{ namespace }", &vars()).unwrap_err();
        assert!(matches!(err, TemplateError::Syntax(m) if m.contains("line")));
    }

    #[test]
    fn text_without_placeholders_is_unchanged() {
        let q = "sum(rate(http_requests_total{code=~\"5..\"}[5m]))\n";
        assert_eq!(render_query(q, &vars()).unwrap(), q);
    }

    proptest::proptest! {
        /// Values are inserted verbatim, whatever characters they hold.
        #[test]
        fn values_render_verbatim(value in "\\PC{0,40}", key in "[a-z_][a-z0-9_]{0,10}") {
            let mut v = vars();
            v.namespace = value.clone();
            v.variables.insert(key.clone(), value.clone());
            let rendered = render_query(
                &format!("<{{{{ namespace }}}}|{{{{ variables.{key} }}}}>"),
                &v,
            )
            .unwrap();
            proptest::prop_assert_eq!(rendered, format!("<{value}|{value}>"));
        }
    }
}
