//! Bounds on what one GraphQL operation may ask for, checked on every transport (POST, batch,
//! WebSocket) because they all run through the schema and this extension:
//!
//! - before parsing, the nesting of the query text (`depth`): the parser recurses;
//! - after parsing, the operation's shape with fragments expanded (`depth`, `aliases`, and the
//!   number of selections as `complexity`), computed once per fragment so a fragment spread
//!   twice into one spread twice (and so on) cannot make the check itself exponential;
//! - at validation, the weighted complexity (`complexity`): every list field counts its
//!   children times its page size or cap (see [`page`] and [`list`]), so nested lists
//!   multiply; all of this before a resolver runs;
//! - while resolving, the response's size (`response_bytes`): every value is charged as it is
//!   produced and, once the budget is spent, nothing more is resolved and the whole answer is
//!   one error.
//!
//! Every refusal is `BAD_USER_INPUT` with `extensions.limit` naming the bound.

use std::{
    collections::HashMap,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
};

use async_graphql::{
    Request, Response, ServerError, ServerResult, ValidationResult, Value,
    extensions::{
        Extension, ExtensionContext, ExtensionFactory, NextExecute, NextPrepareRequest,
        NextResolve, NextSubscribe, NextValidation, ResolveInfo,
    },
    futures_util::stream::{BoxStream, StreamExt},
    parser::types::{ExecutableDocument, Selection, SelectionSet},
};

use crate::error::AppError;

/// Children of a list field without a `first` argument are counted this many times: the most
/// such a list holds (`Project.sharedWith`, bounded by the share cap) or, where nothing caps it,
/// what a large one holds (`Project.assets`, `User.groups`); the response budget bounds the
/// rest.
pub const LIST_WEIGHT: usize = crate::service::sharing::MAX_SHARES as usize;

/// The bounds, from the server's settings (`ATELIER_MAX_QUERY_*`, `ATELIER_MAX_RESPONSE_BYTES`).
#[derive(Clone, Copy, Debug)]
pub struct QueryLimits {
    /// Deepest selection nesting, fragments expanded.
    pub depth: usize,
    /// Largest weighted complexity.
    pub complexity: usize,
    /// Most aliased fields, fragments expanded.
    pub aliases: usize,
    /// Largest response body, in bytes (estimated as JSON while resolving).
    pub response_bytes: u64,
}

impl Default for QueryLimits {
    fn default() -> Self {
        QueryLimits {
            depth: 16,
            complexity: 20_000,
            aliases: 50,
            response_bytes: 64 * 1024 * 1024,
        }
    }
}

/// The cost of a paginated field: its children once per row of the page it asks for.
pub fn page(first: Option<i32>, child_complexity: usize) -> usize {
    let rows = match first {
        None => crate::service::projects::DEFAULT_PAGE,
        Some(n) => (n.max(0) as u64).min(crate::service::projects::MAX_PAGE),
    } as usize;
    1usize.saturating_add(rows.max(1).saturating_mul(child_complexity))
}

/// The cost of a list field without pagination: its children [`LIST_WEIGHT`] times.
pub fn list(child_complexity: usize) -> usize {
    1usize.saturating_add(LIST_WEIGHT.saturating_mul(child_complexity))
}

fn refusal(limit: &'static str, message: String) -> ServerError {
    super::request_error(&AppError::LimitExceeded {
        limit,
        field: None,
        message,
    })
}

/// Deepest nesting of `{`, `[` and `(` in query text: room for a content literal nested
/// deeper than content may be (so that it is refused as `content_depth`, with its field),
/// inside arguments, inside the deepest selections allowed.
const MAX_TEXT_NESTING: usize = 300;

/// Refuses query text nested deeper than [`MAX_TEXT_NESTING`] (strings and comments skipped)
/// before the recursive parser sees it: the parser bounds selections, but literals only by
/// the stack it runs on.
pub fn check_text(query: &str) -> Result<(), ServerError> {
    let max = MAX_TEXT_NESTING;
    let bytes = query.as_bytes();
    let (mut depth, mut i) = (0usize, 0usize);
    while i < bytes.len() {
        match bytes[i] {
            b'{' | b'[' | b'(' => {
                depth += 1;
                if depth > max {
                    return Err(refusal(
                        "depth",
                        format!("the query text nests deeper than {max} brackets"),
                    ));
                }
            }
            b'}' | b']' | b')' => depth = depth.saturating_sub(1),
            b'#' => {
                while i < bytes.len() && bytes[i] != b'\n' {
                    i += 1;
                }
            }
            b'"' => {
                // A block string ends at the next unescaped `"""`, a string at its next `"`.
                if bytes[i..].starts_with(b"\"\"\"") {
                    i += 3;
                    while i < bytes.len() && !bytes[i..].starts_with(b"\"\"\"") {
                        i += if bytes[i..].starts_with(b"\\\"\"\"") {
                            4
                        } else {
                            1
                        };
                    }
                    i += 2;
                } else {
                    i += 1;
                    while i < bytes.len() && bytes[i] != b'"' {
                        i += if bytes[i] == b'\\' { 2 } else { 1 };
                    }
                }
            }
            _ => {}
        }
        i += 1;
    }
    Ok(())
}

/// What a selection set expands to.
#[derive(Clone, Copy, Default)]
struct Shape {
    fields: usize,
    aliases: usize,
    depth: usize,
}

/// Refuses an operation whose expanded shape is over the limits. `max_fields` bounds the
/// selections themselves: weighted complexity is computed later by a walk that expands every
/// fragment, so it must not be handed an exponential document.
pub fn check_shape(doc: &ExecutableDocument, limits: &QueryLimits) -> Result<(), ServerError> {
    let mut memo: HashMap<&str, Option<Shape>> = HashMap::new();
    let mut total = Shape::default();
    for (_, op) in doc.operations.iter() {
        let s = shape_of(doc, &op.node.selection_set.node, &mut memo)?;
        total.fields = total.fields.saturating_add(s.fields);
        total.aliases = total.aliases.saturating_add(s.aliases);
        total.depth = total.depth.max(s.depth);
    }
    if total.depth > limits.depth {
        return Err(refusal(
            "depth",
            format!("the query nests deeper than {} fields", limits.depth),
        ));
    }
    if total.aliases > limits.aliases {
        return Err(refusal(
            "aliases",
            format!("the query has more than {} aliases", limits.aliases),
        ));
    }
    if total.fields > limits.complexity {
        return Err(refusal(
            "complexity",
            format!(
                "the query selects more than {} fields once its fragments are expanded",
                limits.complexity
            ),
        ));
    }
    Ok(())
}

fn shape_of<'d>(
    doc: &'d ExecutableDocument,
    set: &'d SelectionSet,
    memo: &mut HashMap<&'d str, Option<Shape>>,
) -> Result<Shape, ServerError> {
    let mut shape = Shape::default();
    for item in &set.items {
        let inner = match &item.node {
            Selection::Field(f) => {
                let mut s = shape_of(doc, &f.node.selection_set.node, memo)?;
                s.fields = s.fields.saturating_add(1);
                s.aliases = s
                    .aliases
                    .saturating_add(usize::from(f.node.alias.is_some()));
                s.depth = s.depth.saturating_add(1);
                s
            }
            Selection::InlineFragment(f) => shape_of(doc, &f.node.selection_set.node, memo)?,
            Selection::FragmentSpread(spread) => {
                let name = spread.node.fragment_name.node.as_str();
                match memo.get(name) {
                    Some(Some(s)) => *s,
                    // Entered and not finished: the fragment spreads itself.
                    Some(None) => {
                        return Err(refusal("depth", format!("fragment {name} spreads itself")));
                    }
                    None => match doc.fragments.get(name) {
                        // An unknown fragment is validation's to report.
                        None => Shape::default(),
                        Some(fragment) => {
                            memo.insert(name, None);
                            let s = shape_of(doc, &fragment.node.selection_set.node, memo)?;
                            memo.insert(name, Some(s));
                            s
                        }
                    },
                }
            }
        };
        shape.fields = shape.fields.saturating_add(inner.fields);
        shape.aliases = shape.aliases.saturating_add(inner.aliases);
        shape.depth = shape.depth.max(inner.depth);
    }
    Ok(shape)
}

/// The schema extension that applies [`QueryLimits`] to every operation.
pub struct Limits(pub QueryLimits);

impl ExtensionFactory for Limits {
    fn create(&self) -> Arc<dyn Extension> {
        Arc::new(OperationLimits {
            limits: self.0,
            budget: Arc::default(),
        })
    }
}

/// One operation's limits and what its response has spent of its budget so far.
struct OperationLimits {
    limits: QueryLimits,
    budget: Arc<Budget>,
}

#[derive(Default)]
struct Budget {
    spent: AtomicU64,
    exceeded: AtomicBool,
}

fn response_refusal(limits: &QueryLimits) -> Response {
    Response::from_errors(vec![refusal(
        "response_bytes",
        format!(
            "the response would be larger than {} bytes; ask for less (smaller pages, fewer \
             fields)",
            limits.response_bytes
        ),
    )])
}

impl OperationLimits {
    /// Charges `bytes` to the budget; false once it is spent.
    fn charge(&self, bytes: u64) -> bool {
        let spent = self.budget.spent.fetch_add(bytes, Ordering::Relaxed) + bytes;
        if spent > self.limits.response_bytes {
            self.budget.exceeded.store(true, Ordering::Relaxed);
            return false;
        }
        true
    }
}

#[async_graphql::async_trait::async_trait]
impl Extension for OperationLimits {
    async fn prepare_request(
        &self,
        ctx: &ExtensionContext<'_>,
        mut request: Request,
        next: NextPrepareRequest<'_>,
    ) -> ServerResult<Request> {
        // A scan of the text, even when the document cache parsed it already: cheaper than
        // knowing whether it did.
        check_text(&request.query)?;
        let doc = request.parsed_query()?;
        check_shape(doc, &self.limits)?;
        // Complexity reads `first` through the variables; async-graphql's reader refuses an
        // omitted nullable variable ("Variable first is not defined") where execution would
        // take it as null. Say null explicitly, so both agree.
        let omitted: Vec<async_graphql::Name> = doc
            .operations
            .iter()
            .flat_map(|(_, op)| op.node.variable_definitions.iter())
            .filter(|def| def.node.var_type.node.nullable && def.node.default_value.is_none())
            .map(|def| def.node.name.node.clone())
            .collect();
        for name in omitted {
            request.variables.entry(name).or_insert(Value::Null);
        }
        next.run(ctx, request).await
    }

    async fn validation(
        &self,
        ctx: &ExtensionContext<'_>,
        next: NextValidation<'_>,
    ) -> Result<ValidationResult, Vec<ServerError>> {
        let result = next.run(ctx).await?;
        if result.complexity > self.limits.complexity {
            return Err(vec![refusal(
                "complexity",
                format!(
                    "the query's complexity is {}, over the limit of {} (every list counts \
                     its fields once per row it may return: ask for smaller pages)",
                    result.complexity, self.limits.complexity
                ),
            )]);
        }
        if result.depth > self.limits.depth {
            return Err(vec![refusal(
                "depth",
                format!("the query nests deeper than {} fields", self.limits.depth),
            )]);
        }
        Ok(result)
    }

    async fn execute(
        &self,
        ctx: &ExtensionContext<'_>,
        operation_name: Option<&str>,
        next: NextExecute<'_>,
    ) -> Response {
        let response = next.run(ctx, operation_name).await;
        if self.budget.exceeded.load(Ordering::Relaxed) {
            return response_refusal(&self.limits);
        }
        response
    }

    fn subscribe<'s>(
        &self,
        ctx: &ExtensionContext<'_>,
        stream: BoxStream<'s, Response>,
        next: NextSubscribe<'_>,
    ) -> BoxStream<'s, Response> {
        // Each event is its own response with its own budget: charged while the event
        // resolves, judged and reset when it is yielded.
        let budget = self.budget.clone();
        let limits = self.limits;
        next.run(ctx, stream)
            .map(move |response| {
                let over = budget.exceeded.swap(false, Ordering::Relaxed);
                budget.spent.store(0, Ordering::Relaxed);
                if over {
                    response_refusal(&limits)
                } else {
                    response
                }
            })
            .boxed()
    }

    async fn resolve(
        &self,
        ctx: &ExtensionContext<'_>,
        info: ResolveInfo<'_>,
        next: NextResolve<'_>,
    ) -> ServerResult<Option<Value>> {
        if self.budget.exceeded.load(Ordering::Relaxed) {
            // Nothing more is resolved (no more database work); the answer becomes one error.
            // (Null, not None: list items come through here too, and must have a value.)
            return Ok(Some(Value::Null));
        }
        let name_bytes = info.alias.unwrap_or(info.name).len() as u64 + 4;
        let leaf = info.field.selection_set.node.items.is_empty();
        let value = next.run(ctx, info).await?;
        // Objects and lists of objects were charged field by field as their children resolved;
        // a leaf (a scalar, an enum, a JSON document, a list of scalars) is charged whole.
        let bytes = match (&value, leaf) {
            (Some(v), true) => name_bytes + json_size(v),
            _ => name_bytes + 2,
        };
        if !self.charge(bytes) {
            return Ok(Some(Value::Null));
        }
        Ok(value)
    }
}

/// About how many bytes `value` takes as JSON (exact for ASCII without escapes), walked without
/// recursion.
fn json_size(value: &Value) -> u64 {
    let mut total = 0u64;
    let mut stack = vec![value];
    while let Some(v) = stack.pop() {
        total += match v {
            Value::Null => 4,
            Value::Boolean(_) => 5,
            Value::Number(_) => 8,
            Value::String(s) => s.len() as u64 + 2,
            Value::Enum(e) => e.len() as u64 + 2,
            Value::Binary(b) => b.len() as u64 * 4 / 3 + 2,
            Value::List(items) => {
                stack.extend(items.iter());
                items.len() as u64 + 2
            }
            Value::Object(map) => {
                stack.extend(map.values());
                map.keys().map(|k| k.len() as u64 + 4).sum::<u64>() + 2
            }
        };
    }
    total
}
