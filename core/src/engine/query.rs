//! The find body (spec 8.1): filter, sort, skip, limit, projection and joins.

use super::filter::Filter;
use super::record::{Projection, Record};
use crate::error::{Error, Result};
use crate::value::View;
use serde_json::Value as J;
use std::cmp::Ordering;

#[derive(Clone, Debug, Default)]
pub struct FindQuery {
    pub filter: Option<Filter>,
    pub sort: Vec<SortKey>,
    pub skip: usize,
    pub limit: Option<usize>,
    pub projection: Projection,
    pub joins: Vec<Join>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct SortKey {
    pub field: String,
    pub ascending: bool,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Join {
    pub collections: Vec<String>,
    pub local_field: String,
    pub foreign_field: String,
    pub as_field: String,
}

impl FindQuery {
    /// Parses a find body. Absent, `null` or `{}` mean "all records".
    pub fn parse(body: &J) -> Result<FindQuery> {
        let obj = match body {
            J::Null => return Ok(FindQuery::default()),
            J::Object(o) => o,
            _ => return Err(Error::invalid("a query body must be a JSON object")),
        };
        let present = |k: &str| obj.get(k).filter(|v| !v.is_null());
        let mut q = FindQuery {
            filter: match present("filter") {
                Some(f) => Some(Filter::parse(Some(f))?),
                None => None,
            },
            ..FindQuery::default()
        };
        if let Some(sort) = present("sort") {
            q.sort = parse_sort(sort)?;
        }
        q.skip = unsigned(present("skip"), "skip")?.unwrap_or(0);
        q.limit = unsigned(present("limit"), "limit")?;
        q.projection = Projection {
            select: field_list(present("select_fields"), "select_fields")?,
            exclude: field_list(present("exclude_fields"), "exclude_fields")?,
        };
        if let Some(join) = present("join") {
            q.joins = match join {
                J::Array(items) => items.iter().map(Join::parse).collect::<Result<_>>()?,
                other => vec![Join::parse(other)?],
            };
        }
        Ok(q)
    }

    pub fn filter(&self) -> &Filter {
        self.filter.as_ref().unwrap_or(&Filter::All)
    }
}

/// The largest float that still counts integers exactly.
const MAX_SAFE_FLOAT: f64 = 9_007_199_254_740_992.0;

pub fn unsigned(v: Option<&J>, name: &str) -> Result<Option<usize>> {
    match v {
        None => Ok(None),
        Some(v) => match v.as_u64() {
            Some(n) => Ok(Some(usize::try_from(n).unwrap_or(usize::MAX))),
            // `10.0` is an integer written as a float; `1e30` is not a
            // count anybody means (beyond 2^53 floats skip integers).
            None => match v.as_f64() {
                Some(f) if (0.0..=MAX_SAFE_FLOAT).contains(&f) && f.fract() == 0.0 => {
                    Ok(Some(f as usize))
                }
                _ => Err(Error::invalid(format!(
                    "`{name}` must be a non-negative integer (a float only up to 2^53)"
                ))),
            },
        },
    }
}

fn field_list(v: Option<&J>, name: &str) -> Result<Vec<String>> {
    match v {
        None => Ok(Vec::new()),
        Some(J::Array(items)) => items
            .iter()
            .map(|i| {
                i.as_str().map(str::to_string).ok_or_else(|| {
                    Error::invalid(format!("`{name}` must be an array of field names"))
                })
            })
            .collect(),
        Some(J::String(s)) => Ok(split_fields(s)),
        Some(_) => Err(Error::invalid(format!(
            "`{name}` must be an array of field names"
        ))),
    }
}

/// `a,b, c` → `["a","b","c"]`, dropping empties.
pub fn split_fields(s: &str) -> Vec<String> {
    s.split(',')
        .map(str::trim)
        .filter(|f| !f.is_empty())
        .map(str::to_string)
        .collect()
}

fn parse_sort(v: &J) -> Result<Vec<SortKey>> {
    let one = |item: &J| -> Result<SortKey> {
        match item {
            J::String(field) => Ok(SortKey {
                field: field.clone(),
                ascending: true,
            }),
            J::Object(o) => {
                let field = o
                    .get("field")
                    .and_then(J::as_str)
                    .ok_or_else(|| Error::invalid("each sort key needs a string `field`"))?;
                let ascending = match o.get("ascending") {
                    None | Some(J::Null) => match o.get("order").and_then(J::as_str) {
                        Some(d)
                            if ["asc", "ascending"]
                                .iter()
                                .any(|a| d.eq_ignore_ascii_case(a)) =>
                        {
                            true
                        }
                        Some(d)
                            if ["desc", "descending"]
                                .iter()
                                .any(|a| d.eq_ignore_ascii_case(a)) =>
                        {
                            false
                        }
                        Some(d) => {
                            return Err(Error::invalid(format!(
                                "sort `order` is asc or desc, not `{d}`"
                            )))
                        }
                        None => true,
                    },
                    Some(J::Bool(b)) => *b,
                    Some(_) => return Err(Error::invalid("sort `ascending` must be a boolean")),
                };
                Ok(SortKey {
                    field: field.to_string(),
                    ascending,
                })
            }
            _ => Err(Error::invalid(
                "`sort` must be an array of {\"field\": string, \"ascending\": bool}",
            )),
        }
    };
    match v {
        J::Array(items) => items.iter().map(one).collect(),
        other => Ok(vec![one(other)?]),
    }
}

impl Join {
    fn parse(v: &J) -> Result<Join> {
        let o = v
            .as_object()
            .ok_or_else(|| Error::invalid("`join` must be an object"))?;
        let text = |k: &str| o.get(k).and_then(J::as_str).map(str::to_string);
        let collections = match (o.get("collections"), o.get("collection")) {
            (Some(J::Array(items)), _) => items
                .iter()
                .map(|i| {
                    i.as_str()
                        .map(str::to_string)
                        .ok_or_else(|| Error::invalid("join `collections` must be strings"))
                })
                .collect::<Result<Vec<_>>>()?,
            (Some(J::String(c)), _) | (_, Some(J::String(c))) => vec![c.clone()],
            _ => return Err(Error::invalid("a join needs `collections`")),
        };
        if collections.is_empty() {
            return Err(Error::invalid("join `collections` must not be empty"));
        }
        let need = |k: &str| text(k).ok_or_else(|| Error::invalid(format!("a join needs `{k}`")));
        Ok(Join {
            collections,
            local_field: need("local_field")?,
            foreign_field: need("foreign_field")?,
            as_field: text("as_field")
                .or_else(|| text("as"))
                .ok_or_else(|| Error::invalid("a join needs `as_field`"))?,
        })
    }
}

/// The value a sort key or join reads: the primary key or a (dotted) field.
pub fn field_view<'a>(pk: &str, field: &str, id: &'a str, record: &'a Record) -> Option<View<'a>> {
    if field == pk || field == "id" {
        Some(View::Str(id))
    } else {
        record.lookup(field)
    }
}

/// Compares two records by the sort keys; records missing a field sort last.
pub fn compare_records(
    keys: &[SortKey],
    pk: &str,
    a: (&str, &Record),
    b: (&str, &Record),
) -> Ordering {
    for key in keys {
        let va = field_view(pk, &key.field, a.0, a.1).filter(|v| !v.is_null());
        let vb = field_view(pk, &key.field, b.0, b.1).filter(|v| !v.is_null());
        let ord = match (va, vb) {
            (None, None) => Ordering::Equal,
            (None, Some(_)) => Ordering::Greater,
            (Some(_), None) => Ordering::Less,
            (Some(x), Some(y)) => {
                let o = x.total_cmp(&y);
                if key.ascending {
                    o
                } else {
                    o.reverse()
                }
            }
        };
        if ord != Ordering::Equal {
            return ord;
        }
    }
    Ordering::Equal
}
