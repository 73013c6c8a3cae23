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
//!
//! # What a template may do
//!
//! A MetricTemplate is written by one team and rendered inside the operator
//! that serves every team, so rendering is bounded (DESIGN.md rule 9):
//!
//! - the template is at most [`MAX_TEMPLATE_BYTES`], its `templateVariables`
//!   at most [`MAX_VARIABLES_BYTES`] together, the rendered query at most
//!   [`MAX_QUERY_BYTES`];
//! - rendering stops after [`RENDER_FUEL`] steps of the template engine (a
//!   loop over a long value, say), which takes milliseconds;
//! - the language is the part of Jinja a query needs: `{{ … }}` with
//!   variables, attribute and item lookups (`variables.x`, `variables["x"]`),
//!   literals, comparisons, `and`/`or`/`not`, `if`, `for`, `set` and `with`.
//!   What can build a large value in one step, or call code, is refused
//!   before rendering with a message naming it: the operators `*`, `**`,
//!   `+` and `~`, slices, filters, tests, functions and methods, macros,
//!   `set` and `filter` blocks, `include`, `import`, `extends` and `block`.
//!   Flagger's Go templates have none of these either.
//!
//! Every failure is a [`TemplateError`]; the operator counts it as a failed
//! check, never a pass.
//!
//! # Escaping for the query language
//!
//! Values are escaped for the language of the backend the query goes to
//! ([`QueryLanguage::of`]), where petrel knows that language well enough to
//! do it safely, so that a value (a `templateVariables` entry set by whoever
//! writes the Canary) can never change the shape of the query a
//! MetricTemplate's author wrote:
//!
//! | provider | language | a value inside a string literal | a value anywhere else |
//! |---|---|---|---|
//! | `prometheus` | PromQL ([`QueryLanguage::PromQl`]) | in `"…"` and `'…'`: `\` and the quote are backslash-escaped, and line breaks and tabs written as `\n`, `\r`, `\t`; in `` `…` `` a value holding a backtick is refused | only letters, digits, `_`, `:` and `.` (a metric or label name, a number, a duration such as `5m`); anything else is refused |
//! | every other provider | [`QueryLanguage::Verbatim`] | inserted as it is | inserted as it is |
//!
//! So with PromQL, `region="{{ variables.region }}"` and
//! `app=~"{{ variables.pattern }}"` take any value (a regex value is written
//! as the regex itself, e.g. `5\d\d`, and escaped into the string), and
//! `[{{ interval }}]` or `{{ variables.metric }}` take names and durations.
//! A value holding a whole selector (`code!~"5.."`) is refused outside a
//! string: write the selector in the template and put only its values in
//! variables. Inside a `#` comment a value must not hold a line break.
//!
//! **Where petrel differs from Flagger:** Flagger inserts every value into
//! every query verbatim. petrel does so only for the providers without an
//! escaper (http-json's contract names no query language; the query
//! languages of the other backends are each their own and petrel leaves
//! escaping for them to the template's author, as Flagger does).

use std::collections::{BTreeMap, BTreeSet};
use std::io;
use std::sync::{Arc, Mutex};

use minijinja::machinery::ast;
use minijinja::{Environment, ErrorKind, UndefinedBehavior, Value};

use crate::provider::ProviderKind;

/// Longest query template, in bytes.
pub const MAX_TEMPLATE_BYTES: usize = 32 * 1024;
/// Longest `templateVariables` of one metric, keys and values together, in bytes.
pub const MAX_VARIABLES_BYTES: usize = 32 * 1024;
/// Longest rendered query, in bytes.
pub const MAX_QUERY_BYTES: usize = 64 * 1024;
/// Steps (template engine instructions) one rendering may take. A template
/// of [`MAX_TEMPLATE_BYTES`] full of placeholders needs about a tenth of it.
pub const RENDER_FUEL: u64 = 100_000;

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

/// The language a rendered query is written in, which decides how values
/// are escaped into it; see the [module docs](self#escaping-for-the-query-language).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QueryLanguage {
    /// PromQL: values are escaped into string literals, and only plain
    /// names, numbers and durations are accepted elsewhere.
    PromQl,
    /// Values are inserted as they are, as Flagger does.
    Verbatim,
}

impl QueryLanguage {
    /// The language of the queries a provider kind evaluates.
    pub fn of(kind: ProviderKind) -> Self {
        match kind {
            ProviderKind::Prometheus => Self::PromQl,
            _ => Self::Verbatim,
        }
    }
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
    /// The template, its variables or the rendered query is over its size limit.
    #[error("{what} is {size} bytes, over the limit of {limit} bytes")]
    TooLarge {
        /// What is too large, e.g. "the query template".
        what: &'static str,
        /// Its size in bytes (for the rendered query: at least this much).
        size: usize,
        /// The limit in bytes.
        limit: usize,
    },
    /// The template uses a construct petrel's query templates refuse.
    #[error(
        "query template uses {construct}{}, which query templates do not allow (they may use variables, lookups, comparisons, if, for, set and with)",
        line_suffix(*.line)
    )]
    NotAllowed {
        /// The construct, e.g. "the operator `*`".
        construct: String,
        /// The template line it is on, when known.
        line: Option<usize>,
    },
    /// Rendering took more than [`RENDER_FUEL`] steps.
    #[error(
        "query template did not finish rendering within {0} steps (a loop over a long value?); simplify the template"
    )]
    OverBudget(u64),
    /// A value would change the shape of the query if inserted.
    #[error("query template: {0}")]
    UnsafeValue(String),
}

fn plural(n: usize, one: &'static str, many: &'static str) -> &'static str {
    if n == 1 { one } else { many }
}

fn line_suffix(line: Option<usize>) -> String {
    line.map(|line| format!(" (line {line})")).unwrap_or_default()
}

/// Renders a MetricTemplate `query` with `vars`, escaping values for
/// `language`, within the bounds of the [module docs](self).
///
/// Strict: an undefined variable is an error naming it, see
/// [`TemplateError::UndefinedVariables`]. Pure CPU work bounded by
/// [`RENDER_FUEL`]; an async caller still runs it off its runtime's
/// worker threads, as it may take milliseconds.
pub fn render_query(template: &str, vars: &QueryVars, language: QueryLanguage) -> Result<String, TemplateError> {
    if template.len() > MAX_TEMPLATE_BYTES {
        return Err(TemplateError::TooLarge {
            what: "the query template",
            size: template.len(),
            limit: MAX_TEMPLATE_BYTES,
        });
    }
    let variables_size: usize = vars.variables.iter().map(|(key, value)| key.len() + value.len()).sum();
    if variables_size > MAX_VARIABLES_BYTES {
        return Err(TemplateError::TooLarge {
            what: "the metric's templateVariables",
            size: variables_size,
            limit: MAX_VARIABLES_BYTES,
        });
    }

    let sink = Arc::new(Mutex::new(Sink::new(language)));
    let mut env = Environment::empty();
    // Strict: a missing variable must fail the check, not render as "".
    env.set_undefined_behavior(UndefinedBehavior::Strict);
    // Queries are not HTML; never escape (the default callback keys on the
    // template name, set explicitly so that can never change under us).
    env.set_auto_escape_callback(|_| minijinja::AutoEscape::None);
    env.set_keep_trailing_newline(true);
    env.set_fuel(Some(RENDER_FUEL));
    let formatter_sink = sink.clone();
    env.set_formatter(move |out, _state, value| {
        if value.is_undefined() {
            return Err(minijinja::Error::from(ErrorKind::UndefinedError));
        }
        let escaped = lock(&formatter_sink).escape(&value.to_string())?;
        out.write_str(&escaped).map_err(|_| minijinja::Error::from(ErrorKind::WriteFailure))
    });
    check_constructs(template)?;
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
    let rendered = compiled.render_captured_to(ctx, SinkWriter(sink.clone()));
    let mut sink = lock(&sink);
    if let Some(reason) = sink.refused.take() {
        return Err(TemplateError::UnsafeValue(reason));
    }
    if sink.overflowed {
        return Err(TemplateError::TooLarge {
            what: "the rendered query",
            size: sink.attempted,
            limit: MAX_QUERY_BYTES,
        });
    }
    match rendered {
        Ok(_) => String::from_utf8(std::mem::take(&mut sink.out))
            .map_err(|_| TemplateError::Syntax("the rendered query is not UTF-8".into())),
        Err(error) if error.kind() == ErrorKind::OutOfFuel => Err(TemplateError::OverBudget(RENDER_FUEL)),
        Err(error) => Err(TemplateError::Syntax(describe(&error))),
    }
}

/// Refuses every construct that could build a large value in one step or
/// call code: see the [module docs](self#what-a-template-may-do). Checked on
/// the syntax tree, before compiling: minijinja folds constant expressions
/// while compiling, so `"x" * 100000000` would be built there already.
/// An allow list, so that a construct a newer minijinja adds is refused
/// until someone looks at it.
// `SyntaxConfig` is a unit struct unless minijinja's `custom_syntax` feature is on,
// which another crate in a build may turn on: `default()` works either way.
#[allow(clippy::default_constructed_unit_structs)]
fn check_constructs(template: &str) -> Result<(), TemplateError> {
    let ast = minijinja::machinery::parse(
        template,
        "query",
        minijinja::syntax::SyntaxConfig::default(),
        minijinja::machinery::WhitespaceConfig::default(),
    )
    .map_err(|e| TemplateError::Syntax(describe(&e)))?;
    check_stmt(&ast)
}

fn refuse<T>(construct: impl Into<String>, node: &ast::Spanned<T>) -> Result<(), TemplateError> {
    Err(TemplateError::NotAllowed { construct: construct.into(), line: Some(usize::from(node.span().start_line)) })
}

fn check_stmts(stmts: &[ast::Stmt<'_>]) -> Result<(), TemplateError> {
    stmts.iter().try_for_each(check_stmt)
}

fn check_stmt(stmt: &ast::Stmt<'_>) -> Result<(), TemplateError> {
    use ast::Stmt as S;
    match stmt {
        S::Template(t) => check_stmts(&t.children),
        S::EmitExpr(e) => check_expr(&e.expr),
        S::EmitRaw(_) => Ok(()),
        S::ForLoop(l) if l.recursive => refuse("a recursive loop", l),
        S::ForLoop(l) => {
            check_expr(&l.target)?;
            check_expr(&l.iter)?;
            l.filter_expr.iter().try_for_each(check_expr)?;
            check_stmts(&l.body)?;
            check_stmts(&l.else_body)
        }
        S::IfCond(c) => {
            check_expr(&c.expr)?;
            check_stmts(&c.true_body)?;
            check_stmts(&c.false_body)
        }
        S::WithBlock(w) => {
            w.assignments.iter().try_for_each(|(target, value)| check_expr(target).and_then(|()| check_expr(value)))?;
            check_stmts(&w.body)
        }
        S::Set(s) => {
            check_expr(&s.target)?;
            check_expr(&s.expr)
        }
        S::AutoEscape(a) => {
            check_expr(&a.enabled)?;
            check_stmts(&a.body)
        }
        S::SetBlock(s) => refuse("a `set` block", s),
        S::FilterBlock(f) => refuse("a `filter` block", f),
        S::Block(b) => refuse("`block`", b),
        S::Import(i) => refuse("`import`", i),
        S::FromImport(i) => refuse("`import`", i),
        S::Extends(e) => refuse("`extends`", e),
        S::Include(i) => refuse("`include`", i),
        S::Macro(m) => refuse("a macro", m),
        S::CallBlock(c) => refuse("a `call` block", c),
        S::Do(d) => refuse("`do`", d),
    }
}

fn check_expr(expr: &ast::Expr<'_>) -> Result<(), TemplateError> {
    use ast::{BinOpKind as B, Expr as E};
    match expr {
        E::Var(_) | E::Const(_) => Ok(()),
        E::UnaryOp(u) => check_expr(&u.expr),
        E::BinOp(b) => match b.op {
            B::Mul => refuse("the operator `*`", b),
            B::Pow => refuse("the operator `**`", b),
            B::Add => refuse("the operator `+`", b),
            B::Concat => refuse("the operator `~`", b),
            B::Eq
            | B::Ne
            | B::Lt
            | B::Lte
            | B::Gt
            | B::Gte
            | B::ScAnd
            | B::ScOr
            | B::Sub
            | B::Div
            | B::FloorDiv
            | B::Rem
            | B::In => {
                check_expr(&b.left)?;
                check_expr(&b.right)
            }
        },
        E::Compare(c) => {
            check_expr(&c.expr)?;
            c.ops.iter().try_for_each(|op| check_expr(&op.expr))
        }
        E::IfExpr(i) => {
            check_expr(&i.test_expr)?;
            check_expr(&i.true_expr)?;
            i.false_expr.iter().try_for_each(check_expr)
        }
        E::GetAttr(g) => check_expr(&g.expr),
        E::GetItem(g) => {
            check_expr(&g.expr)?;
            check_expr(&g.subscript_expr)
        }
        E::List(l) => l.items.iter().try_for_each(check_expr),
        E::Map(m) => m.keys.iter().chain(&m.values).try_for_each(check_expr),
        E::Slice(s) => refuse("a slice (`x[a:b]`)", s),
        E::Filter(f) => refuse(format!("the filter `{}`", f.name), f),
        E::Test(t) => refuse(format!("the test `{}`", t.name), t),
        E::Call(c) => refuse(
            match &c.expr {
                E::Var(name) => format!("the function `{}`", name.id),
                E::GetAttr(method) => format!("the method `{}`", method.name),
                _ => "a call".to_string(),
            },
            c,
        ),
    }
}

fn lock(sink: &Mutex<Sink>) -> std::sync::MutexGuard<'_, Sink> {
    // Only this rendering uses the sink, on one thread; a poisoned lock still
    // holds a consistent buffer.
    sink.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Where a rendering writes: the query so far, capped at [`MAX_QUERY_BYTES`],
/// and the lexical context the next value lands in.
struct Sink {
    out: Vec<u8>,
    language: QueryLanguage,
    promql: PromQlContext,
    overflowed: bool,
    /// Bytes the template tried to write in all, once over the cap.
    attempted: usize,
    /// Why a value was refused (kept here: minijinja's error would lose it).
    refused: Option<String>,
}

impl Sink {
    fn new(language: QueryLanguage) -> Self {
        Sink { out: Vec::new(), language, promql: PromQlContext::Code, overflowed: false, attempted: 0, refused: None }
    }

    /// `value` escaped for where it lands.
    fn escape(&mut self, value: &str) -> Result<String, minijinja::Error> {
        let escaped = match self.language {
            QueryLanguage::Verbatim => Ok(value.to_owned()),
            QueryLanguage::PromQl => self.promql.escape(value),
        };
        escaped.map_err(|reason| {
            let error = minijinja::Error::new(ErrorKind::InvalidOperation, reason.clone());
            self.refused = Some(reason);
            error
        })
    }
}

struct SinkWriter(Arc<Mutex<Sink>>);

impl io::Write for SinkWriter {
    fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        let mut sink = lock(&self.0);
        if sink.overflowed || sink.out.len() + bytes.len() > MAX_QUERY_BYTES {
            sink.attempted = sink.attempted.max(sink.out.len()) + bytes.len();
            sink.overflowed = true;
            return Err(io::Error::other("the rendered query is too large"));
        }
        for byte in bytes {
            sink.promql = sink.promql.after(*byte);
        }
        sink.out.extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Where the next byte of a PromQL query lands. The bytes that change it
/// are ASCII, so feeding UTF-8 byte by byte is exact.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PromQlContext {
    /// Outside string literals and comments.
    Code,
    /// Inside a `"…"` or `'…'` string (the quote byte).
    String(u8),
    /// Right after a backslash inside a string.
    Escape(u8),
    /// Inside a `` `…` `` raw string (no escapes).
    Raw,
    /// In a `#` comment, up to the end of the line.
    Comment,
}

impl PromQlContext {
    fn after(self, byte: u8) -> Self {
        match (self, byte) {
            (Self::Code, b'"' | b'\'') => Self::String(byte),
            (Self::Code, b'`') => Self::Raw,
            (Self::Code, b'#') => Self::Comment,
            (Self::String(quote), b'\\') => Self::Escape(quote),
            (Self::String(quote), _) if byte == quote => Self::Code,
            (Self::Escape(quote), _) => Self::String(quote),
            (Self::Raw, b'`') => Self::Code,
            (Self::Comment, b'\n') => Self::Code,
            (context, _) => context,
        }
    }

    /// `value` as it can be written here, or why it cannot.
    fn escape(self, value: &str) -> Result<String, String> {
        let shown = || crate::provider::truncate(value, 60);
        match self {
            Self::Code => {
                if value.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b':' | b'.')) {
                    Ok(value.to_owned())
                } else {
                    Err(format!(
                        "the value {:?} is inserted outside a quoted string of the PromQL query, where only letters, digits, '_', ':' and '.' are accepted (a name, a number or a duration); put it inside quotes in the template, e.g. label=\"{{{{ … }}}}\"",
                        shown()
                    ))
                }
            }
            Self::String(quote) => Ok(escape_promql_string(value, char::from(quote))),
            Self::Escape(_) => {
                Err(format!("the value {:?} is inserted right after a backslash in a PromQL string", shown()))
            }
            Self::Raw if value.contains('`') => {
                Err(format!("the value {:?} holds a backtick and is inserted in a `…` PromQL string", shown()))
            }
            Self::Comment if value.contains(['\n', '\r']) => {
                Err(format!("the value {:?} holds a line break and is inserted in a PromQL comment", shown()))
            }
            Self::Raw | Self::Comment => Ok(value.to_owned()),
        }
    }
}

/// `value` escaped to sit between two `quote`s of a PromQL string literal
/// (PromQL reads strings with Go's escapes).
pub(crate) fn escape_promql_string(value: &str, quote: char) -> String {
    let mut out = String::with_capacity(value.len());
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c == quote => {
                out.push('\\');
                out.push(c);
            }
            c => out.push(c),
        }
    }
    out
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
    use std::time::{Duration, Instant};

    use super::*;

    const PROMQL: QueryLanguage = QueryLanguage::PromQl;

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

    fn with_variable(key: &str, value: &str) -> QueryVars {
        let mut v = vars();
        v.variables.insert(key.into(), value.into());
        v
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
        for language in [QueryLanguage::PromQl, QueryLanguage::Verbatim] {
            let rendered = render_query(template, &vars(), language).unwrap();
            assert!(rendered.contains(r#"namespace="test","#));
            assert!(rendered.contains(r#"deployment=~"podinfo","#));
            assert!(rendered.contains(r#"direction="inbound""#));
            assert!(rendered.contains("}[1m]"));
            assert!(!rendered.contains("{{"));
        }
    }

    #[test]
    fn every_documented_variable_renders() {
        let mut v = vars();
        v.route = Some("r".into());
        assert_eq!(
            render_query(
                "{{ name }}|{{ namespace }}|{{ target }}|{{ service }}|{{ ingress }}|{{ route }}|{{ interval }}|{{ variables.direction }}",
                &v,
                QueryLanguage::Verbatim,
            )
            .unwrap(),
            "podinfo|test|podinfo|podinfo-svc|podinfo-ing|r|1m|inbound"
        );
    }

    #[test]
    fn no_html_escaping() {
        let v = with_variable("sel", r#"code!~"5..",a>b&c<d"#);
        assert_eq!(render_query("{{ variables.sel }}", &v, QueryLanguage::Verbatim).unwrap(), r#"code!~"5..",a>b&c<d"#);
        assert_eq!(
            render_query("x{a=\"{{ variables.sel }}\"}", &v, PROMQL).unwrap(),
            r#"x{a="code!~\"5..\",a>b&c<d"}"#
        );
    }

    #[test]
    fn missing_template_variable_is_named() {
        let err = render_query("x{a=\"{{ variables.region }}\"}", &vars(), PROMQL).unwrap_err();
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
        let err = render_query("{{ ingress }} {{ namepsace }}", &v, PROMQL).unwrap_err();
        assert!(matches!(
            &err,
            TemplateError::UndefinedVariables { missing, .. }
                if missing == &vec!["ingress".to_string(), "namepsace".to_string()]
        ));
        assert!(err.to_string().contains("are not set"));
    }

    #[test]
    fn dynamic_lookup_of_missing_key_still_fails_at_render_time() {
        let err = render_query(r#"{{ variables["nope"] }}"#, &vars(), PROMQL).unwrap_err();
        assert!(matches!(err, TemplateError::Syntax(m) if m.contains("undefined")));
    }

    #[test]
    fn syntax_errors_are_reported_with_a_line() {
        let err = render_query("sum(\n{{ namespace }", &vars(), PROMQL).unwrap_err();
        assert!(matches!(err, TemplateError::Syntax(m) if m.contains("line")));
    }

    #[test]
    fn text_without_placeholders_is_unchanged() {
        let q = "sum(rate(http_requests_total{code=~\"5..\"}[5m]))\n";
        assert_eq!(render_query(q, &vars(), PROMQL).unwrap(), q);
    }

    // ---- bounds (issue 11, defect 1) ----

    /// The template of the issue: three nested loops over a 10,000-character string, 10^12
    /// iterations, which rendered forever. Its `*` is refused before anything runs.
    #[test]
    fn the_freezing_template_of_the_issue_is_refused_at_once() {
        let template = r#"{% set s = "x" * 10000 %}{% for a in s %}{% for b in s %}{% for c in s %}{% endfor %}{% endfor %}{% endfor %}1"#;
        let started = Instant::now();
        let err = render_query(template, &vars(), PROMQL).unwrap_err();
        assert!(started.elapsed() < Duration::from_secs(1), "took {:?}", started.elapsed());
        assert_eq!(err, TemplateError::NotAllowed { construct: "the operator `*`".into(), line: Some(1) });
        assert!(err.to_string().contains("do not allow"), "{err}");
    }

    /// The same loops without `*`, over a long variable: stopped by the fuel.
    #[test]
    fn a_loop_over_a_long_value_runs_out_of_fuel_quickly() {
        let v = with_variable("s", &"x".repeat(10_000));
        let template = "{% for a in variables.s %}{% for b in variables.s %}{% for c in variables.s %}{% endfor %}{% endfor %}{% endfor %}1";
        let started = Instant::now();
        let err = render_query(template, &v, PROMQL).unwrap_err();
        let took = started.elapsed();
        assert_eq!(err, TemplateError::OverBudget(RENDER_FUEL));
        assert!(err.to_string().contains("steps"), "{err}");
        assert!(took < Duration::from_secs(2), "took {took:?}");
    }

    #[test]
    fn the_rendered_query_is_capped() {
        let v = with_variable("s", &"x".repeat(10_000));
        let err =
            render_query("{% for a in variables.direction %}{{ variables.s }}{% endfor %}", &v, PROMQL).unwrap_err();
        assert!(
            matches!(err, TemplateError::TooLarge { what: "the rendered query", size, limit: MAX_QUERY_BYTES } if size > MAX_QUERY_BYTES),
            "{err:?}"
        );
        // Just under the cap renders.
        let fits = with_variable("s", &"x".repeat(MAX_QUERY_BYTES / 7 - 1));
        assert_eq!(
            render_query("{% for a in variables.direction %}{{ variables.s }}{% endfor %}", &fits, PROMQL)
                .unwrap()
                .len(),
            7 * (MAX_QUERY_BYTES / 7 - 1)
        );
    }

    #[test]
    fn deep_nesting_is_an_error_not_a_stack_overflow() {
        let ifs = format!("{}x{}", "{% if true %}".repeat(1_300), "{% endif %}".repeat(1_300));
        let deep = render_query(&ifs, &vars(), PROMQL);
        assert!(matches!(deep, Err(TemplateError::Syntax(_))), "{deep:?}");
        let parens = format!("{{{{ {}1{} }}}}", "(".repeat(10_000), ")".repeat(10_000));
        assert!(matches!(render_query(&parens, &vars(), PROMQL), Err(TemplateError::Syntax(_))));
        let lists = format!("{{{{ {}1{} }}}}", "[".repeat(10_000), "]".repeat(10_000));
        assert!(matches!(render_query(&lists, &vars(), PROMQL), Err(TemplateError::Syntax(_))));
    }

    #[test]
    fn templates_and_variables_over_their_limits_are_refused() {
        let template = format!("up{{a=\"{}\"}}", "x".repeat(MAX_TEMPLATE_BYTES));
        assert!(matches!(
            render_query(&template, &vars(), PROMQL),
            Err(TemplateError::TooLarge { what: "the query template", limit: MAX_TEMPLATE_BYTES, .. })
        ));
        let v = with_variable("big", &"x".repeat(MAX_VARIABLES_BYTES));
        let err = render_query("up", &v, PROMQL).unwrap_err();
        assert!(err.to_string().contains("templateVariables"), "{err}");
    }

    #[test]
    fn constructs_that_build_values_or_call_code_are_refused_by_name() {
        for (template, construct) in [
            (r#"{{ "x" * 3 }}"#, "the operator `*`"),
            ("{{ 2 ** 3 }}", "the operator `**`"),
            ("{{ target ~ target }}", "the operator `~`"),
            ("{{ [1] + [2] }}", "the operator `+`"),
            ("{{ target[1:] }}", "a slice (`x[a:b]`)"),
            ("{{ target | upper }}", "the filter `upper`"),
            ("{{ target is defined }}", "the test `defined`"),
            ("{% for i in range(3) %}{% endfor %}", "the function `range`"),
            ("{{ target.upper() }}", "the method `upper`"),
            ("{% set x %}{{ target }}{% endset %}", "a `set` block"),
            ("{% filter upper %}x{% endfilter %}", "a `filter` block"),
            ("{% for x in variables recursive %}{% endfor %}", "a recursive loop"),
            ("{% macro m() %}x{% endmacro %}", "a macro"),
            ("{% include 'other' %}", "`include`"),
            ("{% import 'other' as o %}", "`import`"),
            ("{% extends 'other' %}", "`extends`"),
            ("{% block b %}x{% endblock %}", "`block`"),
        ] {
            match render_query(template, &vars(), PROMQL) {
                Err(TemplateError::NotAllowed { construct: found, .. }) => {
                    assert_eq!(found, construct, "{template}")
                }
                other => panic!("{template}: {other:?}"),
            }
        }
        // Nested deep in an allowed construct, and built from constants (which minijinja
        // would fold while compiling: refused before that).
        let nested = "{% if true %}{% for x in [1] %}{{ [{'a': (\"x\" * 100000000)}] }}{% endfor %}{% endif %}";
        let started = Instant::now();
        assert_eq!(
            render_query(nested, &vars(), PROMQL),
            Err(TemplateError::NotAllowed { construct: "the operator `*`".into(), line: Some(1) })
        );
        assert!(started.elapsed() < Duration::from_millis(500), "took {:?}", started.elapsed());
    }

    #[test]
    fn control_flow_and_comparisons_still_work() {
        let v = with_variable("mode", "strict");
        let template = r#"{% set t = target %}{% if variables.mode == "strict" and not (1 > 2) %}{% for k in variables %}{{ k }}.{% endfor %}{% with n = namespace %}{{ n }}{% endwith %}-{{ 7 - 2 }}{% else %}no{% endif %}{{ t }}"#;
        assert_eq!(render_query(template, &v, QueryLanguage::Verbatim).unwrap(), "direction.mode.test-5podinfo");
    }

    // ---- escaping (issue 11, defect 12) ----

    #[test]
    fn promql_values_cannot_leave_their_string() {
        let hostile = r#"x"} or vector(100) or up{a=""#;
        let v = with_variable("region", hostile);
        let rendered = render_query(r#"sum(up{region="{{ variables.region }}"})"#, &v, PROMQL).unwrap();
        assert_eq!(rendered, r#"sum(up{region="x\"} or vector(100) or up{a=\""})"#);
        let single =
            render_query("sum(up{region='{{ variables.region }}'})", &with_variable("region", "a'b\\c"), PROMQL);
        assert_eq!(single.unwrap(), r"sum(up{region='a\'b\\c'})");
        let lines = render_query(r#"up{a="{{ variables.region }}"}"#, &with_variable("region", "a\nb\tc"), PROMQL);
        assert_eq!(lines.unwrap(), r#"up{a="a\nb\tc"}"#);
        // Verbatim, as Flagger: the same value rewrites the query.
        let verbatim =
            render_query(r#"sum(up{region="{{ variables.region }}"})"#, &v, QueryLanguage::Verbatim).unwrap();
        assert!(verbatim.contains("or vector(100)"), "{verbatim}");
    }

    #[test]
    fn promql_values_outside_strings_must_be_plain_names() {
        for ok in ["5m", "1m30s", "http_requests_total", "job:rate5m", "0.99", ""] {
            let rendered = render_query("rate(x[{{ variables.w }}])", &with_variable("w", ok), PROMQL).unwrap();
            assert_eq!(rendered, format!("rate(x[{ok}])"));
        }
        for bad in ["5m]) or vector(1", "a b", "a-b", "x{a=\"b\"}", "1)", "#"] {
            let err = render_query("rate(x[{{ variables.w }}])", &with_variable("w", bad), PROMQL).unwrap_err();
            assert!(
                matches!(&err, TemplateError::UnsafeValue(m) if m.contains("outside a quoted string")),
                "{bad:?}: {err:?}"
            );
        }
    }

    #[test]
    fn promql_raw_strings_comments_and_escapes() {
        let raw = "up{a=~`{{ variables.v }}`}";
        assert_eq!(render_query(raw, &with_variable("v", r"5\d\d"), PROMQL).unwrap(), r"up{a=~`5\d\d`}");
        assert!(matches!(render_query(raw, &with_variable("v", "a`b"), PROMQL), Err(TemplateError::UnsafeValue(_))));
        let comment = "up # note {{ variables.v }}\n";
        assert_eq!(render_query(comment, &with_variable("v", "a\"b"), PROMQL).unwrap(), "up # note a\"b\n");
        assert!(matches!(
            render_query(comment, &with_variable("v", "x\nor vector(1)"), PROMQL),
            Err(TemplateError::UnsafeValue(_))
        ));
        assert!(matches!(
            render_query(r#"up{a="\{{ variables.v }}"}"#, &with_variable("v", "n"), PROMQL),
            Err(TemplateError::UnsafeValue(_))
        ));
        // A quote inside a string of the other kind does not end it.
        let mixed = r#"up{a="it's {{ variables.v }}"}"#;
        assert_eq!(render_query(mixed, &with_variable("v", "x"), PROMQL).unwrap(), r#"up{a="it's x"}"#);
    }

    #[test]
    fn the_language_follows_the_provider() {
        assert_eq!(QueryLanguage::of(ProviderKind::Prometheus), QueryLanguage::PromQl);
        for kind in ProviderKind::ALL.into_iter().filter(|kind| *kind != ProviderKind::Prometheus) {
            assert_eq!(QueryLanguage::of(kind), QueryLanguage::Verbatim, "{kind}");
        }
    }

    /// Go's reading of a PromQL double-quoted string body (the escapes petrel writes).
    fn unquote(body: &str) -> Option<String> {
        let mut out = String::new();
        let mut chars = body.chars();
        while let Some(c) = chars.next() {
            match c {
                '"' | '\n' => return None,
                '\\' => out.push(match chars.next()? {
                    '\\' => '\\',
                    '"' => '"',
                    'n' => '\n',
                    'r' => '\r',
                    't' => '\t',
                    _ => return None,
                }),
                c => out.push(c),
            }
        }
        Some(out)
    }

    proptest::proptest! {
        /// Verbatim values are inserted as they are, whatever characters they hold.
        #[test]
        fn values_render_verbatim(value in "\\PC{0,40}", key in "[a-z_][a-z0-9_]{0,10}") {
            let mut v = vars();
            v.namespace = value.clone();
            v.variables.insert(key.clone(), value.clone());
            let rendered = render_query(
                &format!("<{{{{ namespace }}}}|{{{{ variables.{key} }}}}>"),
                &v,
                QueryLanguage::Verbatim,
            )
            .unwrap();
            proptest::prop_assert_eq!(rendered, format!("<{value}|{value}>"));
        }

        /// Any value inside a PromQL double-quoted string stays inside it and reads back
        /// as itself.
        #[test]
        fn promql_string_values_round_trip(value in "(\\PC|[\"'`\\\\\n\r\t#{}])*") {
            let v = with_variable("v", &value);
            let rendered = render_query(r#"up{a="{{ variables.v }}"}"#, &v, PROMQL).unwrap();
            let body = rendered.strip_prefix("up{a=\"").and_then(|rest| rest.strip_suffix("\"}"));
            let body = body.expect("the string closes where the template closes it");
            proptest::prop_assert_eq!(unquote(body), Some(value));
        }
    }
}
