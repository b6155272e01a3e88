//! From SQL text to a [`QueryPlan`], refusing what cannot run incrementally.

use std::collections::HashSet;
use std::ops::ControlFlow;

use sqlparser::ast::{
    visit_expressions_mut, BinaryOperator, Distinct, Expr, GroupByExpr, Join as AstJoin,
    JoinConstraint, JoinOperator, ObjectNamePart, Query, Select, SelectItem,
    SelectItemQualifiedWildcardKind, SetExpr, Spanned, Statement, TableFactor, TableWithJoins,
    Visit, VisitMut, Visitor, VisitorMut,
};
use sqlparser::dialect::DuckDbDialect;
use sqlparser::parser::{Parser, ParserError};
use sqlparser::tokenizer::Span;

use crate::codec::{FieldPath, Step};

use super::{
    ColumnRef, Join, JoinKind, OutputColumn, QueryPlan, Role, Source, SqlError, SqlPosition,
};

/// Functions that aggregate over rows; a stream join has no group to aggregate.
const AGGREGATES: &[&str] = &[
    "count",
    "sum",
    "avg",
    "min",
    "max",
    "string_agg",
    "array_agg",
    "list",
    "first",
    "last",
    "any_value",
    "median",
    "mode",
    "stddev",
    "variance",
    "group_concat",
    "bool_and",
    "bool_or",
];

fn at(span: Span) -> SqlPosition {
    if span.start.line == 0 {
        SqlPosition { line: 1, column: 1 }
    } else {
        SqlPosition {
            line: span.start.line as usize,
            column: span.start.column as usize,
        }
    }
}

/// Plans `sql`; `dimensions` lists the topics that are reference tables.
pub fn plan_query(sql: &str, dimensions: &[String]) -> Result<QueryPlan, SqlError> {
    plan_query_with(sql, dimensions, &Declared::new())
}

/// The columns each topic declares (`sources.<topic>.columns`), by topic.
pub type Declared = std::collections::BTreeMap<String, Vec<String>>;

/// [`plan_query`], where an unqualified column names the one source whose
/// topic declares it in `declared` (as SQL resolves an unqualified column
/// against the tables' schemas).
pub fn plan_query_with(
    sql: &str,
    dimensions: &[String],
    declared: &Declared,
) -> Result<QueryPlan, SqlError> {
    let statements = Parser::parse_sql(&DuckDbDialect {}, sql).map_err(parse_error)?;
    let statement = match statements.as_slice() {
        [one] => one,
        [] => {
            return Err(SqlError::new(SqlPosition::default(), "the query is empty")
                .help("write one SELECT ... FROM ... statement"))
        }
        [_, second, ..] => {
            return Err(
                SqlError::new(at(second.span()), "the query holds more than one statement")
                    .help("a pipeline runs one SELECT; put other queries in other pipeline files"),
            )
        }
    };
    let Statement::Query(query) = statement else {
        return Err(SqlError::new(
            at(statement.span()),
            "only a SELECT query can be a pipeline",
        )
        .help("write SELECT ... FROM stream [JOIN other ON ...] [WHERE ...]"));
    };
    let select = check_query_shape(query)?;
    Planner::new(dimensions, declared).plan(select)
}

fn parse_error(err: ParserError) -> SqlError {
    let text = match &err {
        ParserError::ParserError(m) | ParserError::TokenizerError(m) => m.clone(),
        ParserError::RecursionLimitExceeded => "the query nests too deeply".to_string(),
    };
    // sqlparser appends " at Line: L, Column: C" to its messages.
    let number_after = |label: &str| -> Option<usize> {
        let start = text.find(label)? + label.len();
        let digits: String = text[start..]
            .chars()
            .take_while(char::is_ascii_digit)
            .collect();
        digits.parse().ok()
    };
    let position = SqlPosition {
        line: number_after("Line: ").unwrap_or(1),
        column: number_after("Column: ").unwrap_or(1),
    };
    let message = match text.find(" at Line: ") {
        Some(cut) => text[..cut].to_string(),
        None => text.clone(),
    };
    SqlError::new(position, format!("the SQL does not parse: {message}"))
        .help("check the syntax near this position")
}

fn check_query_shape(query: &Query) -> Result<&Select, SqlError> {
    let refuse = |span: Span, what: &str, help: &str| {
        Err(SqlError::new(
            at(span),
            format!("{what} is not supported in a stream join"),
        )
        .help(help))
    };
    if let Some(with) = &query.with {
        return refuse(
            with.span(),
            "WITH (a common table expression)",
            "write the joins directly in FROM",
        );
    }
    if let Some(order) = &query.order_by {
        return refuse(
            order.span(),
            "ORDER BY",
            "output keeps the order of the driving events per key; remove ORDER BY",
        );
    }
    if let Some(limit) = &query.limit_clause {
        return refuse(
            limit.span(),
            "LIMIT",
            "a stream has no end to limit; filter with WHERE instead",
        );
    }
    if query.fetch.is_some() {
        return refuse(query.span(), "FETCH", "filter with WHERE instead");
    }
    let select = match query.body.as_ref() {
        SetExpr::Select(select) => select.as_ref(),
        other => {
            return refuse(
                other.span(),
                "a set operation (UNION, INTERSECT, EXCEPT, VALUES)",
                "write one SELECT per pipeline",
            )
        }
    };
    if let Some(distinct) = &select.distinct {
        let span = match distinct {
            Distinct::On(exprs) => exprs.first().map(|e| e.span()).unwrap_or(select.span()),
            Distinct::Distinct => select.span(),
        };
        return refuse(span, "DISTINCT", "output is append-only; remove DISTINCT");
    }
    let grouped = match &select.group_by {
        GroupByExpr::All(_) => true,
        GroupByExpr::Expressions(exprs, _) => !exprs.is_empty(),
    };
    if grouped {
        return refuse(
            select.group_by.span(),
            "GROUP BY (aggregation)",
            "aggregations are not implemented yet; join and enrich here, aggregate downstream",
        );
    }
    if let Some(having) = &select.having {
        return refuse(
            having.span(),
            "HAVING",
            "aggregations are not implemented yet",
        );
    }
    if let Some(qualify) = &select.qualify {
        return refuse(
            qualify.span(),
            "QUALIFY",
            "window functions are not implemented yet",
        );
    }
    if !select.named_window.is_empty() || select.top.is_some() || select.into.is_some() {
        return refuse(select.span(), "WINDOW, TOP or INTO", "remove it");
    }
    if !select.lateral_views.is_empty() {
        return refuse(select.span(), "LATERAL VIEW", "remove it");
    }
    Ok(select)
}

struct Planner<'a> {
    dimensions: &'a [String],
    declared: &'a Declared,
    sources: Vec<Source>,
    source_spans: Vec<Span>,
}

/// A reference to a column, before resolution: optional qualifier and name.
fn column_parts(expr: &Expr) -> Option<(Option<&sqlparser::ast::Ident>, &sqlparser::ast::Ident)> {
    match expr {
        Expr::Identifier(name) => Some((None, name)),
        Expr::CompoundIdentifier(parts) if parts.len() == 2 => Some((Some(&parts[0]), &parts[1])),
        _ => None,
    }
}

fn split_and(expr: &Expr, out: &mut Vec<Expr>) {
    match expr {
        Expr::BinaryOp {
            left,
            op: BinaryOperator::And,
            right,
        } => {
            split_and(left, out);
            split_and(right, out);
        }
        Expr::Nested(inner) => split_and(inner, out),
        other => out.push(other.clone()),
    }
}

/// Refuses a join keyed on the columns of a LEFT join with ON conditions
/// beyond its key: where those fail, SQL looks the next source up with NULLs,
/// which the join walk (that probed with the candidate's values) cannot yet do.
fn check_conditional_lookups(joins: &[Join], sources: &[Source]) -> Result<(), SqlError> {
    for j in joins {
        for (probe, _) in &j.keys {
            let Some(conditional) = joins
                .iter()
                .find(|k| k.source == probe.source && k.on.is_some())
            else {
                continue;
            };
            let (from, to) = (&sources[conditional.source], &sources[j.source]);
            return Err(SqlError::new(
                conditional.on.as_ref().map_or(SqlPosition { line: 1, column: 1 }, |e| at(e.span())),
                format!(
                    "`{}` is joined on columns of `{}`, whose LEFT JOIN has conditions beyond its key: not supported yet",
                    to.alias, from.alias
                ),
            )
            .help(format!(
                "move the extra conditions on `{}` to WHERE, or make its join INNER",
                from.alias
            )));
        }
    }
    Ok(())
}

fn and_all(mut exprs: Vec<Expr>) -> Option<Expr> {
    let first = if exprs.is_empty() {
        return None;
    } else {
        exprs.remove(0)
    };
    Some(exprs.into_iter().fold(first, |acc, e| Expr::BinaryOp {
        left: Box::new(acc),
        op: BinaryOperator::And,
        right: Box::new(e),
    }))
}

impl<'a> Planner<'a> {
    fn new(dimensions: &'a [String], declared: &'a Declared) -> Self {
        Self {
            dimensions,
            declared,
            sources: Vec::new(),
            source_spans: Vec::new(),
        }
    }

    fn plan(mut self, select: &Select) -> Result<QueryPlan, SqlError> {
        let from: &TableWithJoins = match select.from.as_slice() {
            [one] => one,
            [] => {
                return Err(SqlError::new(at(select.span()), "the query reads no topic")
                    .help("write FROM <topic> [JOIN <topic> ON ...]"))
            }
            [_, second, ..] => {
                return Err(SqlError::new(
                    at(second.relation.span()),
                    "a comma join (FROM a, b) is not supported",
                )
                .help("write FROM a JOIN b ON a.key = b.key"))
            }
        };
        self.add_source(&from.relation)?;
        if self.sources[0].role == Role::Dimension {
            return Err(SqlError::new(
                at(from.relation.span()),
                format!(
                    "the FROM source `{}` is listed in state.dimensions, but the FROM source drives the pipeline and must be an event stream",
                    self.sources[0].topic
                ),
            )
            .help("put the event stream in FROM and JOIN the dimension to it"));
        }
        let mut filters = Vec::new();
        let mut joins = Vec::new();
        for join in &from.joins {
            let (j, residual) = self.add_join(join)?;
            joins.push(j);
            filters.extend(residual);
        }
        let mut outputs = Vec::new();
        let mut names = HashSet::new();
        for item in &select.projection {
            let (name, expr) = match item {
                SelectItem::UnnamedExpr(expr) => {
                    // `o.shipping.city` is named `city`, as in Flink (Calcite).
                    let name = match (column_parts(expr), expr) {
                        (Some((_, col)), _) => col.value.clone(),
                        (None, Expr::CompoundIdentifier(parts)) => parts
                            .last()
                            .map_or_else(|| expr.to_string(), |p| p.value.clone()),
                        _ => expr.to_string(),
                    };
                    (name, expr.clone())
                }
                SelectItem::ExprWithAlias { expr, alias } => (alias.value.clone(), expr.clone()),
                SelectItem::Wildcard(_) | SelectItem::QualifiedWildcard(..) => {
                    for (name, expr, record) in self.expand(item)? {
                        self.check_expr(&expr)?;
                        // As Flink (Calcite) does: a name `*` brings twice gets a number.
                        let name = crate::codec::free_name(&name, |n| names.contains(n));
                        names.insert(name.clone());
                        outputs.push(OutputColumn { name, expr, record });
                    }
                    continue;
                }
            };
            let expr = self.nested(&expr)?;
            self.check_expr(&expr)?;
            let expr = self.qualified(&expr);
            if !names.insert(name.clone()) {
                return Err(SqlError::new(
                    at(item.span()),
                    format!("two output columns are named `{name}`"),
                )
                .help("give one of them another name with AS"));
            }
            outputs.push(OutputColumn {
                name,
                expr,
                record: false,
            });
        }
        if outputs.is_empty() {
            return Err(SqlError::new(at(select.span()), "the SELECT list is empty"));
        }
        if let Some(selection) = &select.selection {
            let selection = self.nested(selection)?;
            self.check_expr(&selection)?;
            filters.push(self.qualified(&selection));
        }
        let filter = and_all(filters);
        let mut plan = QueryPlan {
            sources: Vec::new(),
            joins,
            outputs,
            filter,
            stream_key: Vec::new(),
        };
        self.check_stream_keys(&mut plan)?;
        check_conditional_lookups(&plan.joins, &self.sources)?;
        plan.sources = self.sources;
        Ok(plan)
    }

    fn add_source(&mut self, factor: &TableFactor) -> Result<usize, SqlError> {
        let TableFactor::Table {
            name, alias, args, ..
        } = factor
        else {
            return Err(SqlError::new(
                at(factor.span()),
                "only topics can be joined; a subquery or table function is not supported",
            )
            .help("join the topic itself and move the subquery's conditions to WHERE"));
        };
        if args.is_some() {
            return Err(
                SqlError::new(at(factor.span()), "a table function is not supported")
                    .help("name a Kafka topic"),
            );
        }
        let topic = name
            .0
            .iter()
            .map(|p| match p {
                ObjectNamePart::Identifier(ident) => ident.value.clone(),
                ObjectNamePart::Function(f) => f.name.value.clone(),
            })
            .collect::<Vec<_>>()
            .join(".");
        let alias_name = alias
            .as_ref()
            .map(|a| a.name.value.clone())
            .unwrap_or_else(|| topic.clone());
        if let Some(prev) = self.sources.iter().position(|s| s.alias == alias_name) {
            return Err(SqlError::new(
                at(factor.span()),
                format!("`{alias_name}` names two sources"),
            )
            .help(format!(
                "give the second use of `{}` its own alias, for example `{} AS {}2`",
                self.sources[prev].topic, topic, alias_name
            )));
        }
        let role = if self.dimensions.iter().any(|d| d == &topic) {
            Role::Dimension
        } else {
            Role::Stream
        };
        if role == Role::Stream {
            if let Some(prev) = self.sources.iter().find(|s| s.topic == topic) {
                return Err(SqlError::new(
                    at(factor.span()),
                    format!(
                        "the event stream `{topic}` is read twice (as `{}` and `{alias_name}`)",
                        prev.alias
                    ),
                )
                .help("a self-join of an event stream is not supported; only dimensions can be joined more than once"));
            }
        }
        self.sources.push(Source {
            alias: alias_name,
            topic,
            role,
            columns: Vec::new(),
        });
        self.source_spans.push(factor.span());
        Ok(self.sources.len() - 1)
    }

    /// Resolves a column reference against the sources known so far.
    fn resolve(&mut self, expr: &Expr) -> Result<Option<ColumnRef>, SqlError> {
        let Some((qualifier, name)) = column_parts(expr) else {
            if let Expr::CompoundIdentifier(parts) = expr {
                return Err(SqlError::new(
                    at(expr.span()),
                    format!(
                        "`{}` is not a source of this query, nor a column one declares",
                        parts[0].value
                    ),
                )
                .help(format!(
                    "write a nested field with its source first: {}.{expr}",
                    self.sources.first().map_or("o", |s| s.alias.as_str())
                )));
            }
            return Ok(None);
        };
        let source = match qualifier {
            Some(q) => self
                .sources
                .iter()
                .position(|s| s.alias == q.value)
                .ok_or_else(|| {
                    let known: Vec<_> = self.sources.iter().map(|s| s.alias.as_str()).collect();
                    SqlError::new(
                        at(q.span),
                        format!("`{}` is not a source of this query here", q.value),
                    )
                    .help(format!(
                        "the sources known at this point are: {}; a nested field is written with its source first: {}.{expr}",
                        known.join(", "),
                        known.first().copied().unwrap_or("o"),
                    ))
                })?,
            None if self.sources.len() == 1 => 0,
            None => self.declaring(name)?,
        };
        let columns = &mut self.sources[source].columns;
        let column = match columns.iter().position(|c| c == &name.value) {
            Some(i) => i,
            None => {
                columns.push(name.value.clone());
                columns.len() - 1
            }
        };
        Ok(Some(ColumnRef { source, column }))
    }

    /// `expr` with every unqualified column of a query over several sources
    /// written `alias.column` (the source that declares it: checked by
    /// [`Planner::check_expr`] before), as every later stage reads columns.
    fn qualified(&self, expr: &Expr) -> Expr {
        let mut expr = expr.clone();
        if self.sources.len() > 1 {
            let _ = visit_expressions_mut(&mut expr, |e| {
                if let Expr::Identifier(name) = e {
                    if let Ok(s) = self.declaring(name) {
                        let alias = sqlparser::ast::Ident::new(self.sources[s].alias.clone());
                        *e = Expr::CompoundIdentifier(vec![alias, name.clone()]);
                    }
                }
                ControlFlow::<()>::Continue(())
            });
        }
        expr
    }

    /// `expr` with every column reference written as its source's alias (or
    /// nothing, as the user wrote it) and its column's path text
    /// ([`FieldPath`]): `o.shipping.city` becomes `o."shipping.city"`,
    /// `o.items[1].sku` becomes `o."items[1].sku"`, and a top-level field
    /// keeps its name. Every later step reads columns in this form; it is
    /// applied once, to the expressions as written.
    fn nested(&self, expr: &Expr) -> Result<Expr, SqlError> {
        struct Paths<'p, 'a> {
            planner: &'p Planner<'a>,
            problem: Option<SqlError>,
        }
        impl VisitorMut for Paths<'_, '_> {
            type Break = ();
            fn pre_visit_expr(&mut self, e: &mut Expr) -> ControlFlow<()> {
                match self.planner.path_of(e) {
                    Ok(Some(column)) => *e = column,
                    Ok(None) => {}
                    Err(problem) => {
                        self.problem = Some(problem);
                        return ControlFlow::Break(());
                    }
                }
                ControlFlow::Continue(())
            }
        }
        let mut expr = expr.clone();
        let mut paths = Paths {
            planner: self,
            problem: None,
        };
        let _ = VisitMut::visit(&mut expr, &mut paths);
        match paths.problem {
            Some(p) => Err(p),
            None => Ok(expr),
        }
    }

    /// The column expression `e` names, in path form, or None when `e` is
    /// not a column reference.
    fn path_of(&self, e: &Expr) -> Result<Option<Expr>, SqlError> {
        use sqlparser::ast::{AccessExpr, Ident, Subscript, Value as SqlValue};
        let (parts, chain): (&[Ident], &[AccessExpr]) = match e {
            Expr::Identifier(name) => (std::slice::from_ref(name), &[]),
            Expr::CompoundIdentifier(parts) => (parts.as_slice(), &[]),
            Expr::CompoundFieldAccess { root, access_chain } => match root.as_ref() {
                Expr::Identifier(name) => (std::slice::from_ref(name), access_chain.as_slice()),
                Expr::CompoundIdentifier(parts) => (parts.as_slice(), access_chain.as_slice()),
                _ => return Ok(None),
            },
            _ => return Ok(None),
        };
        // Every part as a step: names, then the access chain's fields and
        // elements (`o.items[1].sku` parses as `o` + `.items`, `[1]`, `.sku`).
        let mut steps: Vec<(Step, Option<&Ident>)> = parts
            .iter()
            .map(|n| (Step::Field(n.value.clone()), Some(n)))
            .collect();
        for access in chain {
            let step = match access {
                AccessExpr::Dot(Expr::Identifier(n)) => {
                    Some((Step::Field(n.value.clone()), Some(n)))
                }
                AccessExpr::Subscript(Subscript::Index {
                    index: Expr::Value(v),
                }) => match &v.value {
                    SqlValue::Number(n, _) => n
                        .parse::<usize>()
                        .ok()
                        .filter(|&n| n >= 1)
                        .map(|n| (Step::Index(n - 1), None)),
                    SqlValue::SingleQuotedString(f) | SqlValue::DoubleQuotedString(f) => {
                        Some((Step::Field(f.clone()), None))
                    }
                    _ => None,
                },
                _ => None,
            };
            match step {
                Some(step) => steps.push(step),
                None => {
                    return Err(SqlError::new(
                        at(e.span()),
                        format!("`{access}` is not a field or element kaflowsql can read from `{e}`"),
                    )
                    .help("read a field as a.b.c or a['c'], and an array element by its position from 1: a.items[1]"))
                }
            }
        }
        // A topic written where its alias is meant (`orders.x` with `FROM
        // orders o`) is not a field of the record.
        if let [first, _, ..] = parts {
            let aliased = self
                .sources
                .iter()
                .find(|s| s.topic == first.value && s.alias != first.value);
            if let Some(s) = aliased {
                return Err(SqlError::new(
                    at(first.span),
                    format!(
                        "the source `{}` is named `{}` in this query",
                        s.topic, s.alias
                    ),
                )
                .help(format!(
                    "write {}.{}",
                    s.alias,
                    parts[1..]
                        .iter()
                        .map(|p| p.value.as_str())
                        .collect::<Vec<_>>()
                        .join(".")
                )));
            }
        }
        // The source: the first step when it names one and a field follows;
        // else (a path without it) the one source declaring its field.
        let alias = match steps.as_slice() {
            [(_, Some(first)), (Step::Field(_), _), ..]
                if self.sources.iter().any(|s| s.alias == first.value) =>
            {
                Some((*first).clone())
            }
            _ => None,
        };
        let rest = &steps[usize::from(alias.is_some())..];
        let Some(((Step::Field(field), field_ident), inner)) = rest.split_first() else {
            return Ok(None);
        };
        if alias.is_none() && !inner.is_empty() && parts.len() > 1 && self.sources.len() > 1 {
            // With one source, `shipping.city` is its field's path (the
            // alias may be left out, as for any column); with several, the
            // first part must be a source or a column one declares.
            if let Some(first) = field_ident {
                if self.declaring(first).is_err() {
                    // `x.col` with `x` neither a source nor a declared
                    // column: left to resolve(), which names the sources.
                    return Ok(None);
                }
            }
        }
        let path = FieldPath {
            field: field.clone(),
            steps: inner.iter().map(|(s, _)| s.clone()).collect(),
        };
        let text = path.text();
        let column = match field_ident {
            Some(ident) if path.steps.is_empty() && text == ident.value => (*ident).clone(),
            _ => Ident::with_quote('"', text),
        };
        Ok(Some(match alias {
            Some(alias) => Expr::CompoundIdentifier(vec![alias, column]),
            None if path.steps.is_empty() => Expr::Identifier(column),
            None => match field_ident.map(|f| self.declaring(f)) {
                // An unqualified path: its source is the one declaring its field.
                Some(Ok(s)) if self.sources.len() > 1 => Expr::CompoundIdentifier(vec![
                    Ident::new(self.sources[s].alias.clone()),
                    column,
                ]),
                _ => Expr::Identifier(column),
            },
        }))
    }

    /// The columns `*` (every source's) or `alias.*` stands for: the declared
    /// columns of the source's topic, in their order; for a source that
    /// declares none, one column holding the whole record (`record`: true),
    /// whose top-level fields the output writes in its place.
    fn expand(&self, item: &SelectItem) -> Result<Vec<(String, Expr, bool)>, SqlError> {
        let span = item.span();
        let sources: Vec<usize> = match item {
            SelectItem::QualifiedWildcard(SelectItemQualifiedWildcardKind::ObjectName(name), _) => {
                let alias = name.to_string();
                let s = self
                    .sources
                    .iter()
                    .position(|s| s.alias == alias)
                    .ok_or_else(|| {
                        SqlError::new(at(span), format!("`{alias}` is not a source of this query"))
                    })?;
                vec![s]
            }
            SelectItem::Wildcard(_) => (0..self.sources.len()).collect(),
            _ => {
                return Err(SqlError::new(at(span), "this `*` form is not supported")
                    .help("write alias.* or list the columns"))
            }
        };
        let mut out = Vec::new();
        for s in sources {
            let source = &self.sources[s];
            let Some(columns) = self.declared.get(&source.topic).filter(|c| !c.is_empty()) else {
                let expr = Expr::CompoundIdentifier(vec![
                    sqlparser::ast::Ident::new(source.alias.clone()),
                    sqlparser::ast::Ident::with_quote('"', FieldPath::RECORD),
                ]);
                out.push((format!("{}.*", source.alias), expr, true));
                continue;
            };
            for c in columns {
                let expr = Expr::CompoundIdentifier(vec![
                    sqlparser::ast::Ident::new(source.alias.clone()),
                    sqlparser::ast::Ident::with_quote('"', FieldPath::top(c).text()),
                ]);
                out.push((c.clone(), expr, false));
            }
        }
        Ok(out)
    }

    /// The one source whose topic declares column `name`, for an
    /// unqualified column of a query over several sources.
    fn declaring(&self, name: &sqlparser::ast::Ident) -> Result<usize, SqlError> {
        let declares: Vec<usize> = (0..self.sources.len())
            .filter(|&s| {
                self.declared
                    .get(&self.sources[s].topic)
                    .is_some_and(|cols| cols.contains(&name.value))
            })
            .collect();
        let aliases = |list: &[usize]| {
            list.iter()
                .map(|&s| format!("{}.{}", self.sources[s].alias, name.value))
                .collect::<Vec<_>>()
                .join(" or ")
        };
        match declares.as_slice() {
            [one] => Ok(*one),
            [] => Err(SqlError::new(
                at(name.span),
                format!(
                    "the column `{}` is not qualified with its source, and no source declares it",
                    name.value
                ),
            )
            .help(format!(
                "write it as <source>.{}, for example {}.{}, or declare it under sources.<topic>.columns",
                name.value, self.sources[0].alias, name.value
            ))),
            many => Err(SqlError::new(
                at(name.span),
                format!(
                    "the column `{}` is ambiguous: more than one source declares it",
                    name.value
                ),
            )
            .help(format!("write {}", aliases(many)))),
        }
    }

    /// Refuses subqueries, aggregates and window functions; records every column used.
    fn check_expr(&mut self, expr: &Expr) -> Result<(), SqlError> {
        struct Collect<'e> {
            found: Vec<&'e Expr>,
            problem: Option<SqlError>,
        }
        impl Visitor for Collect<'_> {
            type Break = ();
            fn pre_visit_expr(&mut self, expr: &Expr) -> ControlFlow<()> {
                let refuse = |what: &str, help: &str| {
                    SqlError::new(
                        at(expr.span()),
                        format!("{what} is not supported in a stream join"),
                    )
                    .help(help)
                };
                let problem = match expr {
                    Expr::Subquery(_) | Expr::Exists { .. } | Expr::InSubquery { .. } => Some(
                        refuse("a subquery", "join the topic instead, or filter with WHERE"),
                    ),
                    Expr::Function(f) if f.over.is_some() => Some(refuse(
                        "a window function (OVER)",
                        "window functions are not implemented yet",
                    )),
                    Expr::Function(f) => {
                        let name = f.name.to_string().to_ascii_lowercase();
                        AGGREGATES.contains(&name.as_str()).then(|| {
                            refuse(
                                &format!("the aggregate `{name}`"),
                                "aggregations are not implemented yet; join and enrich here, aggregate downstream",
                            )
                        })
                    }
                    _ => None,
                };
                if let Some(p) = problem {
                    self.problem = Some(p);
                    return ControlFlow::Break(());
                }
                ControlFlow::Continue(())
            }
        }
        let mut collect = Collect {
            found: Vec::new(),
            problem: None,
        };
        let _ = expr.visit(&mut collect);
        if let Some(p) = collect.problem {
            return Err(p);
        }
        let mut refs = Vec::new();
        collect_columns(expr, &mut refs);
        let _ = collect.found;
        for r in refs {
            self.resolve(&r)?;
        }
        Ok(())
    }

    fn add_join(&mut self, join: &AstJoin) -> Result<(Join, Vec<Expr>), SqlError> {
        let span = join.relation.span();
        let (kind, constraint) = match &join.join_operator {
            JoinOperator::Join(c) | JoinOperator::Inner(c) => (JoinKind::Inner, c),
            JoinOperator::Left(c) | JoinOperator::LeftOuter(c) => (JoinKind::Left, c),
            JoinOperator::Right(_) | JoinOperator::RightOuter(_) => {
                return Err(SqlError::new(at(span), "RIGHT JOIN is not supported yet")
                    .help("put the driving event stream in FROM and LEFT JOIN the other side"))
            }
            JoinOperator::FullOuter(_) => {
                return Err(SqlError::new(at(span), "FULL JOIN is not supported yet")
                    .help("use LEFT JOIN from the driving event stream"))
            }
            JoinOperator::CrossJoin(_) => {
                return Err(SqlError::new(at(span), "CROSS JOIN is not supported")
                    .help("join on an equality: JOIN b ON a.key = b.key"))
            }
            _ => {
                return Err(
                    SqlError::new(at(span), "this kind of join is not supported")
                        .help("use JOIN (INNER) or LEFT JOIN with ON a.key = b.key"),
                )
            }
        };
        let on = match constraint {
            JoinConstraint::On(expr) => expr,
            JoinConstraint::Using(_) | JoinConstraint::Natural | JoinConstraint::None => {
                return Err(SqlError::new(at(span), "a join needs an ON clause")
                    .help("write ON a.key = b.key (USING and NATURAL are not supported)"))
            }
        };
        let source = self.add_source(&join.relation)?;
        let on = &self.nested(on)?;
        self.check_expr(on)?;
        let on = &self.qualified(on);
        let mut conjuncts = Vec::new();
        split_and(on, &mut conjuncts);
        let mut keys = Vec::new();
        let mut residual = Vec::new();
        for c in conjuncts {
            if let Expr::BinaryOp {
                left,
                op: BinaryOperator::Eq,
                right,
            } = &c
            {
                if let (Some(l), Some(r)) = (self.resolve(left)?, self.resolve(right)?) {
                    if l.source == source && r.source < source {
                        keys.push((r, l.column));
                        continue;
                    }
                    if r.source == source && l.source < source {
                        keys.push((l, r.column));
                        continue;
                    }
                }
            }
            residual.push(c);
        }
        if keys.is_empty() {
            return Err(SqlError::new(
                at(on.span()),
                format!(
                    "the ON clause of `{}` has no equality between one of its columns and a column of an earlier source",
                    self.sources[source].alias
                ),
            )
            .help(format!(
                "join on a key, for example ON {}.id = {}.id; other conditions may follow with AND",
                self.sources[0].alias, self.sources[source].alias
            )));
        }
        // A LEFT join's other conditions decide what matches, not which rows
        // survive: they stay with the join. An INNER join's are a filter.
        let on = match kind {
            JoinKind::Left => and_all(std::mem::take(&mut residual)),
            JoinKind::Inner => None,
        };
        Ok((
            Join {
                source,
                kind,
                keys,
                on,
            },
            residual,
        ))
    }

    /// Event streams must all join the driving stream on one key.
    fn check_stream_keys(&self, plan: &mut QueryPlan) -> Result<(), SqlError> {
        for join in &plan.joins {
            let source = &self.sources[join.source];
            if source.role != Role::Stream {
                continue;
            }
            let span = self.source_spans[join.source];
            if let Some((probe, _)) = join.keys.iter().find(|(p, _)| p.source != 0) {
                return Err(SqlError::new(
                    at(span),
                    format!(
                        "the event stream `{}` joins `{}`, not the driving stream `{}`",
                        source.alias, self.sources[probe.source].alias, self.sources[0].alias
                    ),
                )
                .help(format!(
                    "join every event stream to the FROM stream on its key, for example ON {}.key = {}.key; if `{}` is a reference table, list it under state.dimensions",
                    self.sources[0].alias, source.alias, source.topic
                )));
            }
            let mut key: Vec<usize> = join.keys.iter().map(|(p, _)| p.column).collect();
            key.sort_unstable();
            key.dedup();
            if plan.stream_key.is_empty() {
                plan.stream_key = key;
            } else if plan.stream_key != key {
                let name = |cols: &[usize]| {
                    cols.iter()
                        .map(|c| {
                            format!("{}.{}", self.sources[0].alias, self.sources[0].columns[*c])
                        })
                        .collect::<Vec<_>>()
                        .join(", ")
                };
                return Err(SqlError::new(
                    at(span),
                    format!(
                        "the event stream `{}` joins on {}, but another event stream joins on {}",
                        source.alias,
                        name(&key),
                        name(&plan.stream_key)
                    ),
                )
                .help("event streams joined with each other must share one key and be co-partitioned by it; join dimensions on other columns"));
            }
        }
        // Order every stream join's keys by the driving column, so lookups agree.
        for join in &mut plan.joins {
            if self.sources[join.source].role == Role::Stream {
                join.keys.sort_by_key(|(p, _)| p.column);
            }
        }
        Ok(())
    }
}

/// Every column reference (plain or qualified) inside `expr`.
pub(super) fn collect_columns(expr: &Expr, out: &mut Vec<Expr>) {
    struct Cols<'o>(&'o mut Vec<Expr>);
    impl Visitor for Cols<'_> {
        type Break = ();
        fn pre_visit_expr(&mut self, expr: &Expr) -> ControlFlow<()> {
            if matches!(expr, Expr::Identifier(_) | Expr::CompoundIdentifier(_)) {
                self.0.push(expr.clone());
            }
            ControlFlow::Continue(())
        }
    }
    let _ = expr.visit(&mut Cols(out));
}

#[cfg(test)]
mod tests;
