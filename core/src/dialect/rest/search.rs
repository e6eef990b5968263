//! `POST /api/search/{collection}` (spec 11, D1-D2): text, vector or hybrid.

use super::{access, Ctx, Outcome};
use crate::engine::filter::Filter;
use crate::engine::query::{split_fields, unsigned};
use crate::engine::record::{Projection, RecordOut};
use crate::engine::search::{metric_from, SearchRequest};
use crate::engine::{Engine, SearchHit};
use crate::error::{Error, Result};
use crate::server::reads::Finish;
use crate::server::Server;
use crate::wire::format::{self, Format};
use crate::wire::http::Response;
use serde::Serialize;
use serde_json::Value as J;
use tidepool_search::{Language, Scoring, TextQuery};

/// The largest edit distance the clients may send (spec D1: 0-5). Distances
/// above 2 are served as 2: beyond that, typo matching finds mostly noise.
const MAX_CLIENT_EDIT_DISTANCE: u64 = 5;

fn number(v: Option<&J>, name: &str) -> Result<Option<f64>> {
    match v {
        None | Some(J::Null) => Ok(None),
        Some(v) => v
            .as_f64()
            .filter(|f| f.is_finite())
            .map(Some)
            .ok_or_else(|| Error::invalid(format!("`{name}` must be a number"))),
    }
}

fn flag(v: Option<&J>, name: &str, default: bool) -> Result<bool> {
    match v {
        None | Some(J::Null) => Ok(default),
        Some(J::Bool(b)) => Ok(*b),
        Some(_) => Err(Error::invalid(format!("`{name}` must be true or false"))),
    }
}

fn names(v: Option<&J>, name: &str) -> Result<Option<Vec<String>>> {
    match v {
        None | Some(J::Null) => Ok(None),
        Some(J::String(s)) => Ok(Some(split_fields(s)).filter(|f| !f.is_empty())),
        Some(J::Array(items)) => items
            .iter()
            .map(|i| {
                i.as_str()
                    .map(str::to_string)
                    .ok_or_else(|| Error::invalid(format!("`{name}` must list field names")))
            })
            .collect::<Result<Vec<_>>>()
            .map(|v| Some(v).filter(|f| !f.is_empty())),
        Some(_) => Err(Error::invalid(format!(
            "`{name}` must be \"a,b\" or an array of field names"
        ))),
    }
}

fn weights(v: Option<&J>) -> Result<Vec<(String, f32)>> {
    let bad = || Error::invalid("`weights` must be \"title:2.5,body:1\" or {\"title\": 2.5}");
    let weight = |f: f64| -> Result<f32> {
        if f.is_finite() && f >= 0.0 {
            Ok(f as f32)
        } else {
            Err(Error::invalid("field weights must be non-negative numbers"))
        }
    };
    match v {
        None | Some(J::Null) => Ok(Vec::new()),
        Some(J::String(s)) => s
            .split(',')
            .map(str::trim)
            .filter(|p| !p.is_empty())
            .map(|pair| {
                let (f, w) = pair.rsplit_once(':').ok_or_else(bad)?;
                let w: f64 = w.trim().parse().map_err(|_| bad())?;
                Ok((f.trim().to_string(), weight(w)?))
            })
            .collect(),
        Some(J::Object(o)) => o
            .iter()
            .map(|(k, v)| Ok((k.clone(), weight(v.as_f64().ok_or_else(bad)?)?)))
            .collect(),
        Some(_) => Err(bad()),
    }
}

/// Parses a search body into the engine's request and the pre-filter.
pub fn parse(body: &J) -> Result<(SearchRequest, Filter, Projection)> {
    let o = body
        .as_object()
        .ok_or_else(|| Error::invalid("a search body must be a JSON object"))?;
    let get = |k: &str| o.get(k);
    let query = match get("query") {
        None | Some(J::Null) => String::new(),
        Some(J::String(s)) => s.clone(),
        Some(_) => return Err(Error::invalid("`query` must be a string")),
    };
    let vector = match get("vector") {
        None | Some(J::Null) => None,
        Some(J::Array(items)) if !items.is_empty() => Some(
            items
                .iter()
                .map(|x| x.as_f64().filter(|f| f.is_finite()).map(|f| f as f32))
                .collect::<Option<Vec<f32>>>()
                .ok_or_else(|| Error::invalid("`vector` must be an array of finite numbers"))?,
        ),
        Some(_) => {
            return Err(Error::invalid(
                "`vector` must be a non-empty array of numbers",
            ))
        }
    };
    if query.trim().is_empty() && vector.is_none() {
        return Err(Error::invalid(
            "a search needs a `query` (text), a `vector`, or both (hybrid)",
        ));
    }
    let language = match get("language") {
        None | Some(J::Null) => None,
        Some(J::String(l)) => {
            Language::from_name(l).map_err(|e| Error::invalid(e.to_string()))?;
            Some(l.clone())
        }
        Some(_) => {
            return Err(Error::invalid(
                "`language` must be a string like \"english\"",
            ))
        }
    };
    let fuzzy = flag(get("fuzzy"), "fuzzy", false)?;
    let distance = match get("max_edit_distance").or_else(|| get("fuzziness")) {
        None | Some(J::Null) => 2,
        Some(v) => match v.as_u64() {
            Some(d) if d <= MAX_CLIENT_EDIT_DISTANCE => d.min(2) as u8,
            _ => {
                return Err(Error::invalid(format!(
                    "`max_edit_distance` must be an integer from 0 to {MAX_CLIENT_EDIT_DISTANCE}"
                )))
            }
        },
    };
    let limit = unsigned(get("limit").filter(|v| !v.is_null()), "limit")?.unwrap_or(10);
    let mut text = TextQuery::new(query);
    text.fields = names(get("fields"), "fields")?;
    text.weights = weights(get("weights"))?;
    text.language = language;
    text.fuzzy = fuzzy;
    text.max_edit_distance = if fuzzy { distance } else { 0 };
    text.case_sensitive = flag(get("case_sensitive"), "case_sensitive", false)?;
    text.stemming = flag(get("enable_stemming"), "enable_stemming", true)?;
    text.boost_exact = flag(get("boost_exact"), "boost_exact", false)?;
    text.prefix = flag(get("prefix"), "prefix", true)?;
    text.scoring = match get("scoring") {
        None | Some(J::Null) => Scoring::EkoDb,
        Some(J::String(s)) if s.eq_ignore_ascii_case("ekodb") => Scoring::EkoDb,
        Some(J::String(s)) if s.eq_ignore_ascii_case("bm25") => Scoring::Bm25,
        Some(_) => {
            return Err(Error::invalid(
                "`scoring` must be \"ekodb\" (the default) or \"bm25\"",
            ))
        }
    };
    text.min_score = number(get("min_score"), "min_score")?.map(|f| f as f32);
    text.limit = limit;
    let weight = |k: &str| -> Result<f32> {
        match number(get(k), k)? {
            None => Ok(0.5),
            Some(w) if w >= 0.0 => Ok(w as f32),
            Some(_) => Err(Error::invalid(format!("`{k}` must not be negative"))),
        }
    };
    let metric = match get("vector_metric") {
        None | Some(J::Null) => "cosine".to_string(),
        Some(J::String(m)) => m.clone(),
        Some(_) => return Err(Error::invalid("`vector_metric` must be a string")),
    };
    let req = SearchRequest {
        text,
        vector,
        vector_field: match get("vector_field") {
            Some(J::String(f)) if !f.is_empty() => f.clone(),
            _ => "embedding".to_string(),
        },
        metric: metric_from(&metric)?,
        vector_k: unsigned(get("vector_k").filter(|v| !v.is_null()), "vector_k")?,
        ef_search: unsigned(get("ef_search").filter(|v| !v.is_null()), "ef_search")?
            .unwrap_or(0)
            .min(10_000),
        threshold: number(get("vector_threshold"), "vector_threshold")?.map(|f| f as f32),
        text_weight: weight("text_weight")?,
        vector_weight: weight("vector_weight")?,
        limit,
    };
    let filter = Filter::parse(get("filters").or_else(|| get("filter")))?;
    let projection = Projection {
        select: names(get("select_fields"), "select_fields")?.unwrap_or_default(),
        exclude: names(get("exclude_fields"), "exclude_fields")?.unwrap_or_default(),
    };
    Ok((req, filter, projection))
}

/// A key that may read only some fields of `c` searches, filters and
/// weighs only those, and names the text fields it searches (searching
/// every field would match on hidden ones).
fn check_access(ctx: &Ctx<'_>, c: &str, req: &SearchRequest, filter: &Filter) -> Result<()> {
    if ctx.access.read_projection(c).is_none() {
        return Ok(());
    }
    access::check_filter(ctx, c, filter)?;
    if !req.text.query.trim().is_empty() {
        let fields = req.text.fields.as_ref().ok_or_else(|| {
            crate::auth::grants::forbidden(format!(
                "this API key may read only some fields of `{c}`: name the `fields` to search"
            ))
        })?;
        for f in fields {
            ctx.access.check_readable_field(c, f)?;
        }
    }
    for (f, _) in &req.text.weights {
        ctx.access.check_readable_field(c, f)?;
    }
    if req.vector.is_some() {
        ctx.access.check_readable_field(c, &req.vector_field)?;
    }
    Ok(())
}

/// `POST /api/search/{collection}`: the hits with their total and timing.
pub fn search(engine: &mut Engine, ctx: &Ctx<'_>, c: &str) -> Result<Response> {
    answer(engine, ctx, c, false)
}

/// `search` for REST: when the search needs a collection's first index, it
/// is built from a snapshot outside the server lock (seconds for a large
/// collection), then installed and searched under it.
pub fn search_outside_lock(server: &mut Server, ctx: &Ctx<'_>, c: &str) -> Result<Outcome> {
    let asked = Asked::parse(ctx, c)?;
    let plan = server.engine().index_plan(c, &asked.req);
    let (Some(plan), Some(conn)) = (plan, ctx.conn) else {
        let (hits, total) = server
            .engine_mut()
            .search(c, &asked.req, &asked.filter, ctx.now)?;
        return asked
            .reply(ctx, hits, total, ctx.elapsed_ms())
            .map(Outcome::Reply);
    };
    let (c, now, clock) = (c.to_string(), ctx.now, ctx.clock);
    Ok(server.defer_work(conn, move |_| {
        let build = plan.build()?;
        Ok(Finish::UnderLock(Box::new(move |server: &mut Server| {
            server.engine_mut().install_index(build);
            let (hits, total) = server
                .engine_mut()
                .search(&c, &asked.req, &asked.filter, now)?;
            let elapsed = clock.map_or(0, |clock| clock().since(now).as_millis() as u64);
            asked.reply_json(hits, total, elapsed)
        })))
    }))
}

/// The WebSocket `TextSearch` reply: the bare `results` array (spec B5).
pub fn results(engine: &mut Engine, ctx: &Ctx<'_>, c: &str) -> Result<Response> {
    answer(engine, ctx, c, true)
}

fn answer(engine: &mut Engine, ctx: &Ctx<'_>, c: &str, bare: bool) -> Result<Response> {
    let asked = Asked::parse(ctx, c)?;
    let (hits, total) = engine.search(c, &asked.req, &asked.filter, ctx.now)?;
    if bare {
        return ctx.ok(&asked.results(hits));
    }
    asked.reply(ctx, hits, total, ctx.elapsed_ms())
}

/// A search request, checked against the caller's grants, and the fields it
/// may show.
struct Asked {
    req: SearchRequest,
    filter: Filter,
    projection: Projection,
}

#[derive(Serialize)]
struct Hit<'a> {
    record: RecordOut<'a>,
    score: f64,
    matched_fields: Vec<String>,
}

#[derive(Serialize)]
struct Reply<'a> {
    results: Vec<Hit<'a>>,
    total: usize,
    execution_time_ms: u64,
    took_ms: u64,
    execution_path: &'static str,
}

impl Asked {
    fn parse(ctx: &Ctx<'_>, c: &str) -> Result<Asked> {
        let (req, filter, projection) = parse(&ctx.body()?)?;
        check_access(ctx, c, &req, &filter)?;
        let projection = access::view(ctx, c, projection);
        Ok(Asked {
            req,
            filter,
            projection,
        })
    }

    fn results<'a>(&'a self, hits: Vec<SearchHit<'a>>) -> Vec<Hit<'a>> {
        let proj = Some(&self.projection).filter(|p| !p.is_empty());
        hits.into_iter()
            .map(|h| Hit {
                record: RecordOut {
                    projection: proj,
                    ..RecordOut::new(h.found.pk, h.found.id, h.found.record)
                },
                // f32 → f64 via its shortest text form, so 26.4 stays 26.4 on the wire.
                score: h.score.to_string().parse().unwrap_or(f64::from(h.score)),
                matched_fields: h.matched_fields,
            })
            .collect()
    }

    fn body<'a>(&'a self, hits: Vec<SearchHit<'a>>, total: usize, elapsed: u64) -> Reply<'a> {
        let path = match (
            self.req.text.query.trim().is_empty(),
            self.req.vector.is_some(),
        ) {
            (false, true) => "hybrid",
            (true, true) => "vector",
            _ => "text",
        };
        Reply {
            results: self.results(hits),
            total,
            execution_time_ms: elapsed,
            took_ms: elapsed,
            execution_path: path,
        }
    }

    fn reply(
        &self,
        ctx: &Ctx<'_>,
        hits: Vec<SearchHit<'_>>,
        total: usize,
        elapsed: u64,
    ) -> Result<Response> {
        ctx.ok_json(&self.body(hits, total, elapsed))
    }

    /// `reply` for an HTTP request answered away from its `Ctx` (always JSON).
    fn reply_json(&self, hits: Vec<SearchHit<'_>>, total: usize, elapsed: u64) -> Result<Response> {
        let body = self.body(hits, total, elapsed);
        Ok(Response::json(200, format::encode(Format::Json, &body)?))
    }
}
