//! From TOML text to a [`Plan`]: parse with spans, then check every name, type and setting,
//! collecting every problem (not only the first) with the line and column it is at.

use std::collections::BTreeMap;
use std::ops::Range;
use std::time::Duration;

use toml::Spanned;

use super::plan::*;
use super::raw::*;
use crate::aggregates::{WindowConfig, WindowSpec};
use freshet::monitoring::{Monitoring, Watch};
use freshet::stats::Decay;

/// One problem in a spec, at a line and column (both from 1).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub line: usize,
    pub column: usize,
    pub message: String,
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}: {}", self.line, self.column, self.message)
    }
}

/// Every problem found in a spec, in the order of the text.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct SpecErrors(pub Vec<Problem>);

impl std::fmt::Display for SpecErrors {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let lines: Vec<String> = self.0.iter().map(Problem::to_string).collect();
        f.write_str(&lines.join("\n"))
    }
}

/// The longest a schema or feature name may be.
const MAX_NAME_LEN: usize = 64;
/// The most values a distinct count may keep.
pub const MAX_DISTINCT: usize = 256;

/// Where problems are gathered while compiling.
struct Problems<'a> {
    text: &'a str,
    found: Vec<(usize, String)>,
}

impl Problems<'_> {
    fn at(&mut self, span: Range<usize>, message: impl Into<String>) {
        self.found.push((span.start, message.into()));
    }

    fn into_errors(mut self) -> SpecErrors {
        self.found.sort_by_key(|(offset, _)| *offset);
        SpecErrors(
            self.found
                .into_iter()
                .map(|(offset, message)| {
                    let (line, column) = line_column(self.text, offset);
                    Problem {
                        line,
                        column,
                        message,
                    }
                })
                .collect(),
        )
    }
}

/// 1-based line and column (in characters) of a byte offset.
fn line_column(text: &str, offset: usize) -> (usize, usize) {
    let offset = offset.min(text.len());
    let before = text.get(..offset).unwrap_or(text);
    let line = before.matches('\n').count() + 1;
    let column = before
        .rsplit('\n')
        .next()
        .map_or(0, |last| last.chars().count())
        + 1;
    (line, column)
}

/// Parses and checks a spec. The plan's fingerprint must equal the one pinned under
/// `[schema] fingerprint`; a spec without one, or with another, is refused with the fingerprint
/// it has, so a change to what features mean cannot go unnoticed (see the module documentation).
pub fn compile(text: &str) -> Result<Plan, SpecErrors> {
    let raw_schema = toml::from_str::<PinOnly>(text).ok();
    let plan = compile_unpinned(text)?;
    let fingerprint = plan.fingerprint();
    let mut problems = Problems {
        text,
        found: Vec::new(),
    };
    let Some(PinOnly { schema }) = raw_schema else {
        return Ok(plan);
    };
    match &schema.get_ref().fingerprint {
        None => problems.at(
            schema.span(),
            format!(
                "[schema] has no fingerprint: pin the fingerprint of these features, fingerprint = \"{fingerprint}\""
            ),
        ),
        Some(pinned) if pinned.get_ref() != &fingerprint => problems.at(
            pinned.span(),
            format!(
                "the features changed since fingerprint {} was pinned (they now give {fingerprint}): \
                 bump version (models of version {} learned other features) and pin fingerprint = \"{fingerprint}\"",
                pinned.get_ref(),
                plan.version
            ),
        ),
        Some(_) => {}
    }
    if problems.found.is_empty() {
        Ok(plan)
    } else {
        Err(problems.into_errors())
    }
}

/// Only the `[schema]` table, to read the pinned fingerprint.
#[derive(serde::Deserialize)]
struct PinOnly {
    schema: Spanned<RawSchema>,
}

/// Parses and checks a spec without comparing its fingerprint with the pinned one: for tools
/// that compute the fingerprint to pin.
pub fn compile_unpinned(text: &str) -> Result<Plan, SpecErrors> {
    let mut problems = Problems {
        text,
        found: Vec::new(),
    };
    let raw: RawSpec = match toml::from_str(text) {
        Ok(raw) => raw,
        Err(err) => {
            let span = err.span().unwrap_or(0..0);
            problems.at(span, err.message().trim().to_string());
            return Err(problems.into_errors());
        }
    };
    let plan = Compiler {
        problems: &mut problems,
        fields: Vec::new(),
        field_types: Vec::new(),
    }
    .compile(&raw);
    if !problems.found.is_empty() {
        return Err(problems.into_errors());
    }
    plan.ok_or_else(|| problems.into_errors())
}

/// Parses a duration such as "5s", "1m", "30d" into whole milliseconds.
fn duration_ms(problems: &mut Problems, value: &Spanned<String>, what: &str) -> Option<i64> {
    match humantime::parse_duration(value.get_ref()) {
        Ok(d) => match i64::try_from(d.as_millis()) {
            Ok(ms) if Duration::from_millis(ms as u64) == d => Some(ms),
            _ => {
                problems.at(
                    value.span(),
                    format!("{what} must be a whole number of milliseconds"),
                );
                None
            }
        },
        Err(err) => {
            problems.at(
                value.span(),
                format!("{what}: {err} (write e.g. \"500ms\", \"5s\", \"1m\", \"2h\", \"30d\")"),
            );
            None
        }
    }
}

struct Compiler<'p, 'a> {
    problems: &'p mut Problems<'a>,
    fields: Vec<String>,
    field_types: Vec<Option<FieldType>>,
}

/// A feature before ordering: its expression refers to features by their declared index.
struct Draft {
    plan: FeaturePlan,
    span: Range<usize>,
}

impl Compiler<'_, '_> {
    fn field_index(&mut self, name: &str) -> usize {
        if let Some(i) = self.fields.iter().position(|f| f == name) {
            return i;
        }
        self.fields.push(name.to_string());
        self.field_types.push(None);
        self.fields.len() - 1
    }

    fn compile(&mut self, raw: &RawSpec) -> Option<Plan> {
        let (name, version) = self.schema(&raw.schema);
        let mut events = self.events(raw);
        let windows = self.windows(raw);
        let mut entities = self.entities(raw, &mut events);
        self.lookups(raw, &mut events, &entities);
        let label = self.label(&raw.label, &events);
        let (features, output) = self.features(raw, &events, &mut entities, &windows, &label);
        Some(Plan {
            name: name?,
            version: version?,
            fields: self.fields.clone(),
            events,
            entities,
            features,
            output,
            label: label?,
        })
    }

    fn schema(&mut self, schema: &Spanned<RawSchema>) -> (Option<String>, Option<u32>) {
        let s = schema.get_ref();
        let name = s.name.get_ref();
        let name_ok = !name.is_empty()
            && name.len() <= MAX_NAME_LEN
            && name
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-');
        if !name_ok {
            self.problems.at(
                s.name.span(),
                format!("schema name {name:?} must be 1 to {MAX_NAME_LEN} of a-z, 0-9, _ and -"),
            );
        }
        let version = match u32::try_from(*s.version.get_ref()) {
            Ok(v) if v >= 1 => Some(v),
            _ => {
                self.problems
                    .at(s.version.span(), "version must be a whole number from 1");
                None
            }
        };
        (name_ok.then(|| name.clone()), version)
    }

    fn events(&mut self, raw: &RawSpec) -> Vec<EventPlan> {
        if raw.events.is_empty() {
            self.problems
                .at(raw.schema.span(), "the spec declares no [events.TYPE]");
        }
        let mut events = Vec::new();
        for (name, event) in &raw.events {
            let mut fields = Vec::new();
            for (field_name, field) in &event.get_ref().fields {
                let f = field.get_ref();
                let index = self.field_index(field_name);
                let kind = match f.kind.as_ref().map(|k| (k.get_ref().as_str(), k.span())) {
                    Some(("string", _)) => Some(FieldType::String),
                    Some(("number", _)) => Some(FieldType::Number),
                    Some((other, span)) => {
                        self.problems.at(
                            span,
                            format!("field type {other:?} is not one of \"string\", \"number\""),
                        );
                        None
                    }
                    None if f.lookup.is_some() => Some(FieldType::String),
                    None => {
                        self.problems.at(
                            field.span(),
                            format!("field {field_name} of {name} has no type (\"string\" or \"number\")"),
                        );
                        None
                    }
                };
                let source = match (&f.path, &f.lookup) {
                    (Some(path), None) => {
                        let parts: Vec<String> =
                            path.get_ref().split('.').map(str::to_string).collect();
                        if parts.iter().any(String::is_empty) {
                            self.problems.at(
                                path.span(),
                                format!("path {:?} has an empty segment", path.get_ref()),
                            );
                        }
                        Some(Source::Path(parts))
                    }
                    // Resolved once entities are known (see `lookups`).
                    (None, Some(_)) => {
                        if kind == Some(FieldType::Number) {
                            self.problems.at(
                                field.span(),
                                "a looked-up field is a kept string: its type is \"string\"",
                            );
                        }
                        Some(Source::Lookup {
                            entity: usize::MAX,
                            field: usize::MAX,
                        })
                    }
                    _ => {
                        self.problems.at(
                            field.span(),
                            format!(
                                "field {field_name} of {name} needs exactly one of path = \"...\" (in data) or lookup = \"ENTITY.FIELD\""
                            ),
                        );
                        None
                    }
                };
                if let Some(kind) = kind {
                    match self.field_types[index] {
                        Some(known) if known != kind => self.problems.at(
                            field.span(),
                            format!(
                                "field {field_name} is a {} in another event: a field name has one type",
                                known.as_str()
                            ),
                        ),
                        _ => self.field_types[index] = Some(kind),
                    }
                }
                if let (Some(kind), Some(source)) = (kind, source) {
                    fields.push(FieldPlan {
                        field: index,
                        source,
                        kind,
                        optional: f.optional || f.lookup.is_some(),
                    });
                }
            }
            events.push(EventPlan {
                name: name.clone(),
                fields,
                updates: Vec::new(),
            });
        }
        events
    }

    fn windows(&mut self, raw: &RawSpec) -> BTreeMap<String, WindowSpec> {
        let mut specs = BTreeMap::new();
        for (name, window) in &raw.windows {
            let w = window.get_ref();
            let size = duration_ms(self.problems, &w.size, "size");
            let slide = w
                .slide
                .as_ref()
                .map_or(size, |s| duration_ms(self.problems, s, "slide"));
            let ooo = w.out_of_orderness.as_ref().map_or(Some(0), |s| {
                duration_ms(self.problems, s, "out_of_orderness")
            });
            let late = w.allowed_lateness.as_ref().map_or(Some(0), |s| {
                duration_ms(self.problems, s, "allowed_lateness")
            });
            let history = match w
                .history
                .as_ref()
                .map(|h| (u32::try_from(*h.get_ref()), h.span()))
            {
                None => Some(1),
                Some((Ok(h), _)) if h >= 1 => Some(h),
                Some((_, span)) => {
                    self.problems
                        .at(span, "history must be a whole number of windows from 1");
                    None
                }
            };
            let (Some(size), Some(slide), Some(ooo), Some(late), Some(history)) =
                (size, slide, ooo, late, history)
            else {
                continue;
            };
            let ms = |ms: i64| Duration::from_millis(ms.max(0) as u64);
            match WindowSpec::new(&WindowConfig {
                size: ms(size),
                slide: ms(slide),
                out_of_orderness: ms(ooo),
                allowed_lateness: ms(late),
                history,
            }) {
                Ok(spec) => {
                    specs.insert(name.clone(), spec);
                }
                Err(err) => self
                    .problems
                    .at(window.span(), format!("window {name}: {err}")),
            }
        }
        specs
    }

    /// The index of each named event type, with a problem for each unknown one.
    fn event_list(
        &mut self,
        events: &[EventPlan],
        names: &Spanned<Vec<String>>,
        what: &str,
    ) -> Vec<usize> {
        let mut list = Vec::new();
        for name in names.get_ref() {
            match events.iter().position(|e| &e.name == name) {
                Some(i) if !list.contains(&i) => list.push(i),
                Some(_) => {}
                None => self.problems.at(
                    names.span(),
                    format!("{what}: unknown event type {name:?} (declare it as [events.{name}])"),
                ),
            }
        }
        list
    }

    /// The plan of `field` in `event`, if declared there.
    fn declared<'e>(&self, event: &'e EventPlan, field: &str) -> Option<&'e FieldPlan> {
        let index = self.fields.iter().position(|f| f == field)?;
        event.fields.iter().find(|f| f.field == index)
    }

    fn entities(&mut self, raw: &RawSpec, events: &mut [EventPlan]) -> Vec<EntityPlan> {
        let mut entities = Vec::new();
        for (name, entity) in &raw.entities {
            let e = entity.get_ref();
            let on = self.event_list(events, &e.events, &format!("entity {name}"));
            if e.events.get_ref().is_empty() {
                self.problems.at(
                    e.events.span(),
                    format!("entity {name} is updated by no event"),
                );
            }
            if e.key.get_ref().is_empty() {
                self.problems
                    .at(e.key.span(), format!("entity {name} has an empty key"));
            }
            let mut key = Vec::new();
            for field in e.key.get_ref() {
                for &event in &on {
                    match self.declared(&events[event], field) {
                        Some(f) if f.kind == FieldType::String => {}
                        Some(_) => self.problems.at(
                            e.key.span(),
                            format!("key field {field} of entity {name} must be a string"),
                        ),
                        None => self.problems.at(
                            e.key.span(),
                            format!(
                                "key field {field} of entity {name} is not a field of event {}",
                                events[event].name
                            ),
                        ),
                    }
                }
                key.push(self.field_index(field));
            }
            let mut keep = Vec::new();
            if let Some(kept) = &e.keep {
                for field in kept.get_ref() {
                    let known = on.iter().any(|&ev| {
                        self.declared(&events[ev], field)
                            .is_some_and(|f| f.kind == FieldType::String)
                    });
                    if !known {
                        self.problems.at(
                            kept.span(),
                            format!("entity {name} keeps {field}, which no event of it declares as a string"),
                        );
                    }
                    keep.push(self.field_index(field));
                }
            }
            let index = entities.len();
            for &event in &on {
                events[event].updates.push(index);
            }
            entities.push(EntityPlan {
                name: name.clone(),
                key,
                events: on,
                keep,
                slots: Vec::new(),
            });
        }
        entities
    }

    fn lookups(&mut self, raw: &RawSpec, events: &mut [EventPlan], entities: &[EntityPlan]) {
        for (event_index, (event_name, event)) in raw.events.iter().enumerate() {
            for (field_name, field) in &event.get_ref().fields {
                let Some(lookup) = &field.get_ref().lookup else {
                    continue;
                };
                let text = lookup.get_ref();
                let Some((entity_name, kept)) = text.split_once('.') else {
                    self.problems.at(
                        lookup.span(),
                        format!("lookup {text:?} must name ENTITY.FIELD"),
                    );
                    continue;
                };
                let Some(entity) = entities.iter().position(|e| e.name == entity_name) else {
                    self.problems.at(
                        lookup.span(),
                        format!("lookup {text:?}: unknown entity {entity_name}"),
                    );
                    continue;
                };
                let kept_index = self.fields.iter().position(|f| f == kept);
                let Some(kept_index) = kept_index.filter(|k| entities[entity].keep.contains(k))
                else {
                    self.problems.at(
                        lookup.span(),
                        format!("lookup {text:?}: entity {entity_name} does not keep {kept} (add it to its keep list)"),
                    );
                    continue;
                };
                let Some(event_plan) = events.get(event_index) else {
                    continue;
                };
                for &key in &entities[entity].key {
                    let direct = event_plan
                        .fields
                        .iter()
                        .any(|f| f.field == key && matches!(f.source, Source::Path(_)));
                    if !direct {
                        self.problems.at(
                            lookup.span(),
                            format!(
                                "lookup {text:?} in {event_name} needs the key field {} of {entity_name} read from data in {event_name}",
                                self.fields[key]
                            ),
                        );
                    }
                }
                let field_index = self.fields.iter().position(|f| f == field_name);
                if let Some(plan) = events[event_index]
                    .fields
                    .iter_mut()
                    .find(|f| Some(f.field) == field_index)
                {
                    plan.source = Source::Lookup {
                        entity,
                        field: kept_index,
                    };
                }
            }
        }
    }

    fn filter(
        &mut self,
        events: &[EventPlan],
        on: &[usize],
        filter: &Option<Spanned<BTreeMap<String, toml::Value>>>,
    ) -> Vec<Filter> {
        let Some(filter) = filter else {
            return Vec::new();
        };
        let mut filters = Vec::new();
        for (field, value) in filter.get_ref() {
            let values: Option<Vec<String>> = match value {
                toml::Value::String(s) => Some(vec![s.clone()]),
                toml::Value::Array(items) => items
                    .iter()
                    .map(|v| v.as_str().map(str::to_string))
                    .collect(),
                _ => None,
            };
            let Some(values) = values.filter(|v| !v.is_empty()) else {
                self.problems.at(
                    filter.span(),
                    format!("where {field} = ...: give a string or a list of strings"),
                );
                continue;
            };
            for &event in on {
                match self.declared(&events[event], field) {
                    Some(f) if f.kind == FieldType::String => {}
                    _ => self.problems.at(
                        filter.span(),
                        format!(
                            "where {field}: {field} is not a string field of event {}",
                            events[event].name
                        ),
                    ),
                }
            }
            let index = self.field_index(field);
            filters.push(Filter {
                field: index,
                values,
            });
        }
        filters
    }

    fn label(&mut self, label: &Spanned<RawLabel>, events: &[EventPlan]) -> Option<LabelPlan> {
        let l = label.get_ref();
        let side = |c: &mut Self, side: &Spanned<RawLabelEvent>, what: &str| {
            let s = side.get_ref();
            let Some(event) = events.iter().position(|e| &e.name == s.event.get_ref()) else {
                c.problems.at(
                    s.event.span(),
                    format!("label {what}: unknown event type {:?}", s.event.get_ref()),
                );
                return None;
            };
            let filter = c.filter(events, &[event], &s.filter);
            Some(EventMatch { event, filter })
        };
        let example = side(self, &l.example, "example");
        let positive = side(self, &l.positive, "positive");
        let mut matching = Vec::new();
        if let (Some(example), Some(positive)) = (&example, &positive) {
            if l.matching.get_ref().is_empty() {
                self.problems.at(
                    l.matching.span(),
                    "match names no field: say which fields tie a positive event to its example",
                );
            }
            for field in l.matching.get_ref() {
                for event in [example.event, positive.event] {
                    if self.declared(&events[event], field).is_none() {
                        self.problems.at(
                            l.matching.span(),
                            format!(
                                "match field {field} is not a field of event {}",
                                events[event].name
                            ),
                        );
                    }
                }
                matching.push(self.field_index(field));
            }
        }
        let horizon = duration_ms(self.problems, &l.horizon, "horizon");
        if horizon == Some(0) {
            self.problems
                .at(l.horizon.span(), "horizon must be longer than 0");
        }
        let feedback = match l.feedback.get_ref().as_str() {
            "fnw" => Some(FeedbackMode::Fnw),
            "wait" => Some(FeedbackMode::Wait),
            other => {
                self.problems.at(
                    l.feedback.span(),
                    format!("feedback {other:?} is not \"fnw\" or \"wait\""),
                );
                None
            }
        };
        Some(LabelPlan {
            example: example?,
            positive: positive?,
            matching,
            horizon_ms: horizon.filter(|&h| h > 0)?,
            feedback: feedback?,
        })
    }

    #[allow(clippy::too_many_arguments)]
    fn features(
        &mut self,
        raw: &RawSpec,
        events: &[EventPlan],
        entities: &mut [EntityPlan],
        windows: &BTreeMap<String, WindowSpec>,
        label: &Option<LabelPlan>,
    ) -> (Vec<FeaturePlan>, Vec<usize>) {
        if raw.feature.is_empty() {
            self.problems
                .at(raw.schema.span(), "the spec declares no [[feature]]");
        }
        let mut names: BTreeMap<String, usize> = BTreeMap::new();
        for (i, feature) in raw.feature.iter().enumerate() {
            let name = &feature.get_ref().name;
            if names.insert(name.get_ref().clone(), i).is_some() {
                self.problems.at(
                    name.span(),
                    format!("feature {} is declared twice", name.get_ref()),
                );
            }
            let n = name.get_ref();
            let ok = !n.is_empty()
                && n.len() <= MAX_NAME_LEN
                && n.chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
            if !ok {
                self.problems.at(
                    name.span(),
                    format!(
                        "feature name {n:?} must be 1 to {MAX_NAME_LEN} of letters, digits, _ and -"
                    ),
                );
            }
        }
        let example = label.as_ref().map(|l| l.example.event);
        let mut drafts = Vec::new();
        for feature in &raw.feature {
            if let Some(draft) = self.feature(feature, events, entities, windows, example, &names) {
                drafts.push(draft);
            }
        }
        if drafts.len() != raw.feature.len() {
            return (Vec::new(), Vec::new());
        }
        share_window_counts(events, entities, &mut drafts);
        let Some(order) = self.order(&drafts) else {
            return (Vec::new(), Vec::new());
        };
        // Renumber references from declared positions to evaluation positions.
        let mut position = vec![0; drafts.len()];
        for (new, &old) in order.iter().enumerate() {
            position[old] = new;
        }
        let mut features: Vec<FeaturePlan> =
            order.iter().map(|&old| drafts[old].plan.clone()).collect();
        for feature in &mut features {
            match &mut feature.expr {
                Expr::Ratio(a, b) | Expr::Difference(a, b) => {
                    *a = position[*a];
                    *b = position[*b];
                }
                Expr::Least(list) | Expr::Greatest(list) => {
                    for f in list {
                        *f = position[*f];
                    }
                }
                Expr::Rate {
                    hits,
                    trials,
                    prior,
                    ..
                } => {
                    *hits = position[*hits];
                    *trials = position[*trials];
                    if let Prior::Feature(p) = prior {
                        *p = position[*p];
                    }
                }
                Expr::Slot { .. } | Expr::Field(_) | Expr::WindowElapsed { .. } => {}
            }
        }
        let output = (0..drafts.len())
            .filter(|&old| drafts[old].plan.emit)
            .map(|old| position[old])
            .collect::<Vec<_>>();
        if output.is_empty() {
            self.problems.at(
                raw.schema.span(),
                "no feature is emitted (emit = false on every one)",
            );
        }
        (features, output)
    }

    /// An evaluation order in which every feature comes after the features it reads, or a
    /// problem naming a cycle.
    fn order(&mut self, drafts: &[Draft]) -> Option<Vec<usize>> {
        fn deps(expr: &Expr) -> Vec<usize> {
            match expr {
                Expr::Ratio(a, b) | Expr::Difference(a, b) => vec![*a, *b],
                Expr::Least(list) | Expr::Greatest(list) => list.clone(),
                Expr::Rate {
                    hits,
                    trials,
                    prior,
                    ..
                } => {
                    let mut d = vec![*hits, *trials];
                    if let Prior::Feature(p) = prior {
                        d.push(*p);
                    }
                    d
                }
                Expr::Slot { .. } | Expr::Field(_) | Expr::WindowElapsed { .. } => Vec::new(),
            }
        }
        // 0 unvisited, 1 on the current path, 2 done.
        let mut mark = vec![0u8; drafts.len()];
        let mut order = Vec::new();
        for start in 0..drafts.len() {
            let mut stack: Vec<(usize, usize)> = vec![(start, 0)];
            let mut path: Vec<usize> = Vec::new();
            while let Some(&mut (node, ref mut next)) = stack.last_mut() {
                if *next == 0 {
                    if mark[node] == 2 {
                        stack.pop();
                        continue;
                    }
                    mark[node] = 1;
                    path.push(node);
                }
                let d = deps(&drafts[node].plan.expr);
                if let Some(&child) = d.get(*next) {
                    *next += 1;
                    match mark[child] {
                        0 => stack.push((child, 0)),
                        1 => {
                            let from = path.iter().position(|&p| p == child).unwrap_or(0);
                            let mut cycle: Vec<&str> = path[from..]
                                .iter()
                                .map(|&i| drafts[i].plan.name.as_str())
                                .collect();
                            cycle.push(&drafts[child].plan.name);
                            self.problems.at(
                                drafts[node].span.clone(),
                                format!("features form a cycle: {}", cycle.join(" -> ")),
                            );
                            return None;
                        }
                        _ => {}
                    }
                } else {
                    mark[node] = 2;
                    order.push(node);
                    path.pop();
                    stack.pop();
                }
            }
        }
        Some(order)
    }

    fn feature(
        &mut self,
        feature: &Spanned<RawFeature>,
        events: &[EventPlan],
        entities: &mut [EntityPlan],
        windows: &BTreeMap<String, WindowSpec>,
        example: Option<usize>,
        names: &BTreeMap<String, usize>,
    ) -> Option<Draft> {
        let f = feature.get_ref();
        let span = feature.span();
        let name = f.name.get_ref().clone();
        let kind = f.kind.get_ref().as_str();
        let keys = Keys::of(f);
        let allowed: &[&str] = match kind {
            "count" | "decayed_count" | "since_last" | "since_first" => &[
                "entity",
                "on",
                "where",
                "window",
                "span",
                "half_life",
                "unit",
            ],
            "sum" | "mean" | "std" | "decayed_sum" => &[
                "entity",
                "field",
                "on",
                "where",
                "window",
                "span",
                "half_life",
            ],
            "min" | "max" | "last" | "delta" => &["entity", "field", "on", "where"],
            "distinct" | "is_new" => &["entity", "field", "on", "where", "max"],
            "ewma_mean" | "ewma_std" | "zscore" => &["entity", "field", "on", "where", "decay"],
            "value" => &["field"],
            "ratio" | "difference" | "least" | "greatest" => &["of"],
            "window_elapsed" => &["window", "span", "unit"],
            "rate" => &["hits", "trials", "prior", "weight"],
            other => {
                self.problems.at(
                    f.kind.span(),
                    format!(
                        "unknown kind {other:?}; the vocabulary is count, sum, mean, std, min, max, distinct, last, \
                         since_last, since_first, ewma_mean, ewma_std, zscore, delta, is_new, decayed_count, \
                         decayed_sum, value, window_elapsed, ratio, difference, least, greatest, rate"
                    ),
                );
                return None;
            }
        };
        let mut ok = true;
        for (key, key_span) in keys.present {
            if !allowed.contains(&key) {
                self.problems.at(
                    key_span,
                    format!("{key} does not apply to a {kind} feature"),
                );
                ok = false;
            }
        }
        // Kind-specific requirements.
        let windowed_kinds = ["count", "sum", "mean", "std", "window_elapsed"];
        if f.window.is_some() && !windowed_kinds.contains(&kind) {
            if let Some(w) = &f.window {
                self.problems
                    .at(w.span(), format!("a {kind} feature is over all time; window applies to count, sum, mean and std"));
            }
            ok = false;
        }
        if f.span.is_some() && f.window.is_none() {
            if let Some(s) = &f.span {
                self.problems.at(s.span(), "span needs a window");
            }
            ok = false;
        }
        let monitoring = self.monitoring(f, &name, span.clone());
        let emit = f.emit.as_ref().is_none_or(|e| *e.get_ref());
        let transforms = self.transforms(f);
        let default = f.default.as_ref().map_or(0.0, |d| *d.get_ref());
        if !default.is_finite() || default.abs() > freshet::stats::MAX_ABS_VALUE {
            if let Some(d) = &f.default {
                self.problems
                    .at(d.span(), "default must be a finite number");
            }
            ok = false;
        }
        let expr = match kind {
            "value" => {
                let field = self.example_field(f, events, example, FieldType::Number)?;
                Some(Expr::Field(field))
            }
            "ratio" | "difference" => {
                let Some(of) = &f.of else {
                    self.problems
                        .at(span.clone(), format!("a {kind} needs of = [\"A\", \"B\"]"));
                    return None;
                };
                let refs: Vec<Option<usize>> = of
                    .get_ref()
                    .iter()
                    .map(|n| self.reference(names, n, of.span()))
                    .collect();
                match refs.as_slice() {
                    [Some(a), Some(b)] if kind == "ratio" => Some(Expr::Ratio(*a, *b)),
                    [Some(a), Some(b)] => Some(Expr::Difference(*a, *b)),
                    [_, _] => None,
                    _ => {
                        self.problems
                            .at(of.span(), format!("a {kind} takes exactly two features"));
                        None
                    }
                }
            }
            "least" | "greatest" => {
                let Some(of) = &f.of else {
                    self.problems.at(
                        span.clone(),
                        format!("a {kind} needs of = [\"A\", \"B\", ...]"),
                    );
                    return None;
                };
                let refs: Vec<Option<usize>> = of
                    .get_ref()
                    .iter()
                    .map(|n| self.reference(names, n, of.span()))
                    .collect();
                if refs.len() < 2 {
                    self.problems
                        .at(of.span(), format!("a {kind} takes two features or more"));
                    return None;
                }
                let refs: Option<Vec<usize>> = refs.into_iter().collect();
                let refs = refs?;
                Some(if kind == "least" {
                    Expr::Least(refs)
                } else {
                    Expr::Greatest(refs)
                })
            }
            "window_elapsed" => {
                let Some(window) = &f.window else {
                    self.problems.at(
                        span.clone(),
                        "a window_elapsed needs window = \"...\" and span",
                    );
                    return None;
                };
                let Some(spec) = windows.get(window.get_ref()) else {
                    self.problems.at(
                        window.span(),
                        format!(
                            "unknown window {:?} (declare it as [windows.{}])",
                            window.get_ref(),
                            window.get_ref()
                        ),
                    );
                    return None;
                };
                let span_windows = match &f.span {
                    None => 1,
                    Some(s) => match u32::try_from(*s.get_ref()) {
                        Ok(n) if n >= 1 && n <= spec.history() => n,
                        _ => {
                            self.problems.at(
                                s.span(),
                                format!(
                                    "span must be from 1 to the window's history ({})",
                                    spec.history()
                                ),
                            );
                            return None;
                        }
                    },
                };
                let unit_ms = unit_ms(self.problems, f)?;
                Some(Expr::WindowElapsed {
                    spec: *spec,
                    span: span_windows,
                    unit_ms,
                })
            }
            "rate" => {
                let hits = f
                    .hits
                    .as_ref()
                    .and_then(|h| self.reference(names, h.get_ref(), h.span()));
                let trials = f
                    .trials
                    .as_ref()
                    .and_then(|t| self.reference(names, t.get_ref(), t.span()));
                if f.hits.is_none() || f.trials.is_none() || f.prior.is_none() || f.weight.is_none()
                {
                    self.problems.at(
                        span.clone(),
                        "a rate needs hits, trials (features), prior (a number or a feature) and weight",
                    );
                }
                let prior = f.prior.as_ref().and_then(|p| match p.get_ref() {
                    toml::Value::Float(x) => Some(Prior::Value(*x)),
                    toml::Value::Integer(x) => Some(Prior::Value(*x as f64)),
                    toml::Value::String(n) => {
                        self.reference(names, n, p.span()).map(Prior::Feature)
                    }
                    _ => {
                        self.problems
                            .at(p.span(), "prior is a number or the name of a feature");
                        None
                    }
                });
                let weight = f.weight.as_ref().and_then(|w| {
                    let x = *w.get_ref();
                    if x > 0.0 && x.is_finite() {
                        Some(x)
                    } else {
                        self.problems
                            .at(w.span(), "weight must be a number above 0");
                        None
                    }
                });
                match (hits, trials, prior, weight) {
                    (Some(hits), Some(trials), Some(prior), Some(weight)) => Some(Expr::Rate {
                        hits,
                        trials,
                        prior,
                        weight,
                    }),
                    _ => None,
                }
            }
            _ => self.aggregate(f, kind, events, entities, windows, example),
        };
        let expr = expr?;
        if !ok {
            return None;
        }
        Some(Draft {
            plan: FeaturePlan {
                name,
                expr,
                default,
                transforms: transforms?,
                emit,
                monitoring: if emit { monitoring } else { None },
            },
            span,
        })
    }

    fn reference(
        &mut self,
        names: &BTreeMap<String, usize>,
        name: &str,
        span: Range<usize>,
    ) -> Option<usize> {
        let found = names.get(name).copied();
        if found.is_none() {
            self.problems.at(
                span,
                format!("unknown feature {name:?}: no [[feature]] has that name"),
            );
        }
        found
    }

    /// The field a feature reads from the example event, checked to be there with `kind`.
    fn example_field(
        &mut self,
        f: &RawFeature,
        events: &[EventPlan],
        example: Option<usize>,
        kind: FieldType,
    ) -> Option<usize> {
        let Some(field) = &f.field else {
            self.problems.at(
                f.kind.span(),
                format!("a {} feature needs field = \"...\"", f.kind.get_ref()),
            );
            return None;
        };
        let example = example?;
        match self.declared(&events[example], field.get_ref()) {
            Some(plan) if plan.kind == kind => Some(plan.field),
            Some(_) => {
                self.problems.at(
                    field.span(),
                    format!("field {} is not a {}", field.get_ref(), kind.as_str()),
                );
                None
            }
            None => {
                self.problems.at(
                    field.span(),
                    format!(
                        "field {} is not a field of the example event {}",
                        field.get_ref(),
                        events[example].name
                    ),
                );
                None
            }
        }
    }

    fn monitoring(&mut self, f: &RawFeature, name: &str, span: Range<usize>) -> Option<Monitoring> {
        let emit = f.emit.as_ref().is_none_or(|e| *e.get_ref());
        if !emit {
            if let Some(w) = &f.watch {
                self.problems.at(
                    w.span(),
                    format!("feature {name} is not emitted, so drift cannot watch it"),
                );
            }
            return None;
        }
        let watch = match f.watch.as_ref().map(|w| (w.get_ref().as_str(), w.span())) {
            Some(("value", _)) => Some(Watch::Value),
            Some(("log1p", _)) => Some(Watch::Log1p),
            Some(("ignore", _)) => Some(Watch::Ignore),
            Some((other, span)) => {
                self.problems.at(
                    span,
                    format!("watch {other:?} is not \"value\", \"log1p\" or \"ignore\""),
                );
                None
            }
            None => {
                self.problems.at(
                    span.clone(),
                    format!("feature {name} has no monitoring: say watch = \"value\", \"log1p\" or \"ignore\", and why in reason = \"...\""),
                );
                None
            }
        };
        let reason = match &f.reason {
            Some(r) if r.get_ref().trim().len() >= 10 => Some(r.get_ref().trim().to_string()),
            Some(r) => {
                self.problems.at(
                    r.span(),
                    format!(
                        "the reason for monitoring {name} this way must say why, in a sentence"
                    ),
                );
                None
            }
            None => {
                if watch.is_some() {
                    self.problems.at(
                        span,
                        format!("feature {name} has no reason = \"...\" for its monitoring"),
                    );
                }
                None
            }
        };
        Some(Monitoring::new(watch?, &reason?))
    }

    fn transforms(&mut self, f: &RawFeature) -> Option<Vec<Transform>> {
        let Some(list) = &f.transform else {
            return Some(Vec::new());
        };
        let mut out = Vec::new();
        let mut ok = true;
        for step in list.get_ref() {
            match parse_transform(step.get_ref()) {
                Ok(t) => out.push(t),
                Err(message) => {
                    self.problems.at(step.span(), message);
                    ok = false;
                }
            }
        }
        ok.then_some(out)
    }

    /// An aggregate over an entity's events: finds or adds its slot(s) and says what to read.
    fn aggregate(
        &mut self,
        f: &RawFeature,
        kind: &str,
        events: &[EventPlan],
        entities: &mut [EntityPlan],
        windows: &BTreeMap<String, WindowSpec>,
        example: Option<usize>,
    ) -> Option<Expr> {
        let Some(entity_name) = &f.entity else {
            self.problems.at(
                f.kind.span(),
                format!("a {kind} feature needs entity = \"...\""),
            );
            return None;
        };
        let Some(entity) = entities
            .iter()
            .position(|e| &e.name == entity_name.get_ref())
        else {
            self.problems.at(
                entity_name.span(),
                format!(
                    "unknown entity {:?} (declare it as [entities.{}])",
                    entity_name.get_ref(),
                    entity_name.get_ref()
                ),
            );
            return None;
        };
        // The example event must carry the entity's key, or the feature could not be computed.
        if let Some(example) = example {
            for &key in &entities[entity].key {
                if self
                    .declared(&events[example], &self.fields[key].clone())
                    .is_none()
                {
                    self.problems.at(
                        entity_name.span(),
                        format!(
                            "entity {} is keyed by {}, which the example event {} does not carry",
                            entities[entity].name, self.fields[key], events[example].name
                        ),
                    );
                    return None;
                }
            }
        }
        let on = match &f.on {
            Some(on) => {
                let list = self.event_list(events, on, "on");
                for &event in &list {
                    if !entities[entity].events.contains(&event) {
                        self.problems.at(
                            on.span(),
                            format!(
                                "on: event {} does not update entity {}",
                                events[event].name, entities[entity].name
                            ),
                        );
                    }
                }
                list
            }
            None => entities[entity].events.clone(),
        };
        let filter = self.filter(events, &on, &f.filter);
        // A field the aggregate takes, declared (as a number or string) in every event of `on`.
        let on_field = |c: &mut Self, ty: FieldType| -> Option<usize> {
            let Some(field) = &f.field else {
                c.problems.at(
                    f.kind.span(),
                    format!("a {kind} feature needs field = \"...\""),
                );
                return None;
            };
            for &event in &on {
                match c.declared(&events[event], field.get_ref()) {
                    Some(plan) if plan.kind == ty => {}
                    _ => {
                        c.problems.at(
                            field.span(),
                            format!(
                                "field {} is not a {} field of event {}",
                                field.get_ref(),
                                ty.as_str(),
                                events[event].name
                            ),
                        );
                        return None;
                    }
                }
            }
            Some(c.field_index(field.get_ref()))
        };
        let window = match &f.window {
            Some(w) => match windows.get(w.get_ref()) {
                Some(spec) => {
                    let span = match &f.span {
                        None => Some(1),
                        Some(s) => match u32::try_from(*s.get_ref()) {
                            Ok(n) if n >= 1 && n <= spec.history() => Some(n),
                            _ => {
                                self.problems.at(
                                    s.span(),
                                    format!(
                                        "span must be from 1 to the window's history ({})",
                                        spec.history()
                                    ),
                                );
                                None
                            }
                        },
                    };
                    Some((*spec, span?))
                }
                None => {
                    self.problems.at(
                        w.span(),
                        format!(
                            "unknown window {:?} (declare it as [windows.{}])",
                            w.get_ref(),
                            w.get_ref()
                        ),
                    );
                    return None;
                }
            },
            None => None,
        };
        if window.is_some() && matches!(kind, "mean" | "std") && !filter.is_empty() {
            self.problems.at(
                f.filter.as_ref().map_or(f.kind.span(), |w| w.span()),
                "a windowed mean or std takes no where: narrow it with on",
            );
            return None;
        }
        let half_life = match (&f.half_life, kind) {
            (Some(h), _) => {
                let ms = duration_ms(self.problems, h, "half_life")?;
                if ms <= 0 {
                    self.problems
                        .at(h.span(), "half_life must be longer than 0");
                    return None;
                }
                Some(ms)
            }
            (None, "decayed_count" | "decayed_sum") => {
                self.problems.at(
                    f.kind.span(),
                    format!("a {kind} feature needs half_life = \"...\""),
                );
                return None;
            }
            (None, _) => None,
        };
        let decay = match (&f.decay, kind) {
            (Some(d), _) => match Decay::new(*d.get_ref()) {
                Ok(decay) => Some(decay),
                Err(err) => {
                    self.problems.at(d.span(), err.to_string());
                    return None;
                }
            },
            (None, "ewma_mean" | "ewma_std" | "zscore") => {
                self.problems.at(
                    f.kind.span(),
                    format!("a {kind} feature needs decay = β (0 < β < 1; memory about 1/(1 − β) events)"),
                );
                return None;
            }
            (None, _) => None,
        };
        let max = match (&f.max, kind) {
            (Some(m), _) => match usize::try_from(*m.get_ref()) {
                Ok(n) if (1..=MAX_DISTINCT).contains(&n) => Some(n),
                _ => {
                    self.problems
                        .at(m.span(), format!("max must be from 1 to {MAX_DISTINCT}"));
                    return None;
                }
            },
            (None, "distinct" | "is_new") => {
                self.problems.at(
                    f.kind.span(),
                    format!("a {kind} feature needs max = N, the most values kept (at most {MAX_DISTINCT})"),
                );
                return None;
            }
            (None, _) => None,
        };
        let unit_ms = unit_ms(self.problems, f)?;
        let fields = self.fields.clone();
        let mut slot =
            |kind: SlotKind| add_slot(&mut entities[entity], events, &fields, &on, &filter, kind);
        let (slot_index, read) = match (kind, window) {
            ("count", None) => (slot(SlotKind::Count), Read::Count),
            // An unfiltered windowed count reads how many events its windows took, which any
            // windows of the same settings and events also know (see share_window_counts).
            ("count", Some((spec, span))) if filter.is_empty() => (
                slot(SlotKind::Windows {
                    spec,
                    amount: Amount::One,
                }),
                Read::WindowEvents { span },
            ),
            ("count", Some((spec, span))) => (
                slot(SlotKind::Windows {
                    spec,
                    amount: Amount::One,
                }),
                Read::WindowCount { span },
            ),
            ("sum" | "mean" | "std", None) => {
                let field = on_field(self, FieldType::Number)?;
                let read = match kind {
                    "sum" => Read::Sum,
                    "mean" => Read::Mean,
                    _ => Read::Std,
                };
                (slot(SlotKind::Moments { field }), read)
            }
            ("sum" | "mean", Some((spec, span))) => {
                let field = on_field(self, FieldType::Number)?;
                let read = if kind == "sum" {
                    Read::WindowSum { span }
                } else {
                    Read::WindowMean { span }
                };
                (
                    slot(SlotKind::Windows {
                        spec,
                        amount: Amount::Field(field),
                    }),
                    read,
                )
            }
            ("std", Some((spec, span))) => {
                let field = on_field(self, FieldType::Number)?;
                let square = slot(SlotKind::Windows {
                    spec,
                    amount: Amount::Square(field),
                });
                (
                    slot(SlotKind::Windows {
                        spec,
                        amount: Amount::Field(field),
                    }),
                    Read::WindowStd { span, square },
                )
            }
            ("min", _) => {
                let field = on_field(self, FieldType::Number)?;
                (slot(SlotKind::Min { field }), Read::Min)
            }
            ("max", _) => {
                let field = on_field(self, FieldType::Number)?;
                (slot(SlotKind::Max { field }), Read::Max)
            }
            ("last", _) => {
                let field = on_field(self, FieldType::Number)?;
                (slot(SlotKind::Last { field }), Read::Last)
            }
            ("delta", _) => {
                let field = on_field(self, FieldType::Number)?;
                let example_field = self.example_field(f, events, example, FieldType::Number)?;
                (
                    slot(SlotKind::Last { field }),
                    Read::Delta {
                        field: example_field,
                    },
                )
            }
            ("distinct", _) | ("is_new", _) => {
                let field = on_field(self, FieldType::String)?;
                let s = slot(SlotKind::Distinct {
                    field,
                    max: max.unwrap_or(MAX_DISTINCT),
                });
                if kind == "distinct" {
                    (s, Read::Distinct)
                } else {
                    let example_field =
                        self.example_field(f, events, example, FieldType::String)?;
                    (
                        s,
                        Read::IsNew {
                            field: example_field,
                        },
                    )
                }
            }
            ("since_last", _) => (slot(SlotKind::LastSeen), Read::Since { unit_ms }),
            ("since_first", _) => (slot(SlotKind::FirstSeen), Read::Since { unit_ms }),
            ("ewma_mean" | "ewma_std" | "zscore", _) => {
                let field = on_field(self, FieldType::Number)?;
                let decay = decay?;
                let s = slot(SlotKind::Ewma { field, decay });
                let read = match kind {
                    "ewma_mean" => Read::EwmaMean,
                    "ewma_std" => Read::EwmaStd,
                    _ => Read::Zscore {
                        field: self.example_field(f, events, example, FieldType::Number)?,
                    },
                };
                (s, read)
            }
            ("decayed_count", _) => (
                slot(SlotKind::Decayed {
                    half_life_ms: half_life?,
                    amount: Amount::One,
                }),
                Read::Decayed,
            ),
            ("decayed_sum", _) => {
                let field = on_field(self, FieldType::Number)?;
                (
                    slot(SlotKind::Decayed {
                        half_life_ms: half_life?,
                        amount: Amount::Field(field),
                    }),
                    Read::Decayed,
                )
            }
            _ => return None,
        };
        Some(Expr::Slot {
            entity,
            slot: slot_index,
            read,
        })
    }
}

/// The unit of a time feature in milliseconds (seconds unless `unit` says otherwise).
fn unit_ms(problems: &mut Problems, f: &RawFeature) -> Option<i64> {
    match f.unit.as_ref().map(|u| (u.get_ref().as_str(), u.span())) {
        None | Some(("s", _)) => Some(1_000),
        Some(("ms", _)) => Some(1),
        Some(("m", _)) => Some(60_000),
        Some(("h", _)) => Some(3_600_000),
        Some(("d", _)) => Some(86_400_000),
        Some((other, span)) => {
            problems.at(span, format!("unit {other:?} is not one of ms, s, m, h, d"));
            None
        }
    }
}

/// Drops the windows an unfiltered windowed count would keep when other windows of the same
/// settings take the same events: every event of `on` enters every such windows (a filtered
/// count's with 0 when its filter fails), so their event counts are the same, and one state
/// serves both. The bookstore's item keeps one set of windows for its actions and purchases, as
/// bookstore.rs does, instead of two.
fn share_window_counts(events: &[EventPlan], entities: &mut [EntityPlan], drafts: &mut [Draft]) {
    for (entity_index, entity) in entities.iter_mut().enumerate() {
        let mut s = 0;
        while s < entity.slots.len() {
            let plain = &entity.slots[s];
            let SlotKind::Windows {
                spec,
                amount: Amount::One,
            } = plain.kind
            else {
                s += 1;
                continue;
            };
            if !plain.filter.is_empty() {
                s += 1;
                continue;
            }
            // Another windows of the same settings and events that takes every event of them.
            let takes_every_event = |other: &SlotPlan| match other.kind {
                SlotKind::Windows {
                    spec: other_spec,
                    amount,
                } if other_spec == spec && other.on == plain.on => match amount {
                    Amount::One => true,
                    Amount::Field(f) | Amount::Square(f) => other
                        .on
                        .iter()
                        .all(|&e| events[e].fields.iter().any(|p| p.field == f && !p.optional)),
                },
                _ => false,
            };
            let Some(host) =
                (0..entity.slots.len()).find(|&o| o != s && takes_every_event(&entity.slots[o]))
            else {
                s += 1;
                continue;
            };
            let host = if host > s { host - 1 } else { host };
            entity.slots.remove(s);
            let renumber = |i: usize| if i > s { i - 1 } else { i };
            for draft in drafts.iter_mut() {
                if let Expr::Slot {
                    entity: e,
                    slot,
                    read,
                } = &mut draft.plan.expr
                    && *e == entity_index
                {
                    if *slot == s {
                        *slot = host;
                    } else {
                        *slot = renumber(*slot);
                    }
                    if let Read::WindowStd { square, .. } = read {
                        *square = renumber(*square);
                    }
                }
            }
        }
    }
}

/// Adds a slot to an entity unless an identical one is there; returns its index.
///
/// The slot's id is its definition in words, with fields and events by name (not by index), so
/// a stored state keeps its meaning when the spec gains a field or an event elsewhere:
/// `count on user_action where action=view`, `windows(1m/1m, 5s late 1m, 60) of 1 on
/// user_action where action=purchase`.
fn add_slot(
    entity: &mut EntityPlan,
    events: &[EventPlan],
    fields: &[String],
    on: &[usize],
    filter: &[Filter],
    kind: SlotKind,
) -> usize {
    let on_names: Vec<&str> = on.iter().map(|&e| events[e].name.as_str()).collect();
    let mut on_names = on_names;
    on_names.sort_unstable();
    let mut filters: Vec<String> = filter
        .iter()
        .map(|f| format!("{}={}", fields[f.field], f.values.join("|")))
        .collect();
    filters.sort();
    let ms = |d: std::time::Duration| humantime::format_duration(d).to_string().replace(' ', "");
    let amount = |a: Amount| match a {
        Amount::One => "1".to_string(),
        Amount::Field(f) => fields[f].clone(),
        Amount::Square(f) => format!("{}^2", fields[f]),
    };
    let what = match &kind {
        SlotKind::Count => "count".to_string(),
        SlotKind::Moments { field } => format!("moments of {}", fields[*field]),
        SlotKind::Min { field } => format!("min of {}", fields[*field]),
        SlotKind::Max { field } => format!("max of {}", fields[*field]),
        SlotKind::Distinct { field, max } => format!("distinct({max}) of {}", fields[*field]),
        SlotKind::Last { field } => format!("last of {}", fields[*field]),
        SlotKind::FirstSeen => "first seen".to_string(),
        SlotKind::LastSeen => "last seen".to_string(),
        SlotKind::Ewma { field, decay } => format!("ewma({}) of {}", decay.get(), fields[*field]),
        SlotKind::Windows { spec, amount: a } => format!(
            "windows({}/{}, {} late {}, {}) of {}",
            ms(spec.size()),
            ms(spec.slide()),
            ms(spec.out_of_orderness()),
            ms(spec.allowed_lateness()),
            spec.history(),
            amount(*a)
        ),
        SlotKind::Decayed {
            half_life_ms,
            amount: a,
        } => format!(
            "decayed({}) of {}",
            ms(std::time::Duration::from_millis(
                (*half_life_ms).max(0) as u64
            )),
            amount(*a)
        ),
    };
    let mut id = format!("{what} on {}", on_names.join(","));
    if !filters.is_empty() {
        id.push_str(&format!(" where {}", filters.join(",")));
    }
    if let Some(i) = entity.slots.iter().position(|s| s.id == id) {
        return i;
    }
    entity.slots.push(SlotPlan {
        id,
        on: on.to_vec(),
        filter: filter.to_vec(),
        kind,
    });
    entity.slots.len() - 1
}

/// Parses one transform step: `log1p`, `clamp(LO, HI)`, `exp_decay(TAU)`, `scale(K)`.
fn parse_transform(text: &str) -> Result<Transform, String> {
    let text = text.trim();
    let (name, args) = match text.split_once('(') {
        Some((name, rest)) => {
            let Some(args) = rest.strip_suffix(')') else {
                return Err(format!(
                    "transform {text:?} is missing its closing parenthesis"
                ));
            };
            let args: Result<Vec<f64>, _> =
                args.split(',').map(|a| a.trim().parse::<f64>()).collect();
            let Ok(args) = args else {
                return Err(format!("transform {text:?}: arguments must be numbers"));
            };
            if args.iter().any(|a| !a.is_finite()) {
                return Err(format!("transform {text:?}: arguments must be finite"));
            }
            (name.trim(), args)
        }
        None => (text, Vec::new()),
    };
    match (name, args.as_slice()) {
        ("log1p", []) => Ok(Transform::Log1p),
        ("clamp", [lo, hi]) if lo <= hi => Ok(Transform::Clamp(*lo, *hi)),
        ("clamp", [_, _]) => Err(format!(
            "transform {text:?}: the low bound is above the high one"
        )),
        ("exp_decay", [tau]) if *tau > 0.0 => Ok(Transform::ExpDecay(*tau)),
        ("exp_decay", [_]) => Err(format!("transform {text:?}: τ must be above 0")),
        ("scale", [k]) => Ok(Transform::Scale(*k)),
        _ => Err(format!(
            "unknown transform {text:?}; the transforms are log1p, clamp(LO, HI), exp_decay(TAU), scale(K)"
        )),
    }
}

/// The keys a feature sets beyond name, kind and the common ones, with their spans.
struct Keys {
    present: Vec<(&'static str, Range<usize>)>,
}

impl Keys {
    fn of(f: &RawFeature) -> Keys {
        let mut present = Vec::new();
        let mut add = |key: &'static str, span: Option<Range<usize>>| {
            if let Some(span) = span {
                present.push((key, span));
            }
        };
        add("entity", f.entity.as_ref().map(Spanned::span));
        add("field", f.field.as_ref().map(Spanned::span));
        add("on", f.on.as_ref().map(Spanned::span));
        add("where", f.filter.as_ref().map(Spanned::span));
        add("window", f.window.as_ref().map(Spanned::span));
        add("span", f.span.as_ref().map(Spanned::span));
        add("decay", f.decay.as_ref().map(Spanned::span));
        add("half_life", f.half_life.as_ref().map(Spanned::span));
        add("max", f.max.as_ref().map(Spanned::span));
        add("unit", f.unit.as_ref().map(Spanned::span));
        add("of", f.of.as_ref().map(Spanned::span));
        add("hits", f.hits.as_ref().map(Spanned::span));
        add("trials", f.trials.as_ref().map(Spanned::span));
        add("prior", f.prior.as_ref().map(Spanned::span));
        add("weight", f.weight.as_ref().map(Spanned::span));
        Keys { present }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_and_columns_count_from_one_in_characters() {
        let text = "ab\nçd\n";
        assert_eq!(line_column(text, 0), (1, 1));
        assert_eq!(line_column(text, 3), (2, 1));
        assert_eq!(line_column(text, 5), (2, 2), "ç is one column");
        assert_eq!(line_column(text, 100), (3, 1));
    }

    #[test]
    fn transforms_parse_and_refuse_nonsense() {
        assert_eq!(parse_transform("log1p"), Ok(Transform::Log1p));
        assert_eq!(
            parse_transform("clamp(0, 43200)"),
            Ok(Transform::Clamp(0.0, 43200.0))
        );
        assert_eq!(
            parse_transform("exp_decay(3600)"),
            Ok(Transform::ExpDecay(3600.0))
        );
        assert!(parse_transform("clamp(2, 1)").is_err());
        assert!(parse_transform("exp_decay(0)").is_err());
        assert!(parse_transform("sqrt").is_err());
        assert!(parse_transform("clamp(0, 1").is_err());
        assert!(parse_transform("scale(x)").is_err());
    }
}
