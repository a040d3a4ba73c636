//! A YAML tree that remembers where every key and value came from, and a
//! reader that turns it into typed values with precise errors.
//!
//! Why not `#[derive(Deserialize)]` with `deny_unknown_fields`? serde reports
//! *that* a field is unknown or mistyped, but not the key path, and a
//! typeless tree would lose the scalar's text (`partition: 007` must stay
//! `007`). Walking our own tree built from serde-saphyr's parser
//! (`granit_parser`) gives, for every error, the file, line, column and the
//! full key path (`pipelines.qsiprep.resources.mem`), and lets each key decide
//! how its scalar is read. Unknown keys are rejected when a mapping is opened,
//! with the closest valid key as a hint.

use std::collections::{BTreeMap, HashMap};

use serde_saphyr::granit_parser::{Event, Marker, Parser, ScalarStyle, Span, Tag};

use super::error::{ConfigError, Loc, Source, backticked, closest};
use super::expand::{expand_vars, is_env_name};
use super::units::{
    DURATION_FORMS, MAX_MEM_MB, MAX_TIME_S, MEMORY_FORMS, parse_duration, parse_memory,
};

#[derive(Debug, Clone)]
pub(crate) struct Node {
    pub kind: Kind,
    pub loc: Loc,
}

#[derive(Debug, Clone)]
pub(crate) enum Kind {
    /// `~`, `null`, or nothing after the colon.
    Null,
    /// The scalar's text after YAML escapes, verbatim: `007` stays `007`.
    Scalar {
        text: String,
    },
    Seq(Vec<Node>),
    Map(Vec<Entry>),
}

#[derive(Debug, Clone)]
pub(crate) struct Entry {
    pub key: String,
    pub key_loc: Loc,
    pub value: Node,
}

impl Kind {
    fn describe(&self) -> &'static str {
        match self {
            Kind::Null => "nothing",
            Kind::Scalar { .. } => "a single value",
            Kind::Seq(_) => "a list",
            Kind::Map(_) => "a mapping",
        }
    }
}

fn loc_of(span: &Span) -> Loc {
    marker_loc(&span.start)
}

/// granit's markers have 1-based lines and 0-based columns.
fn marker_loc(m: &Marker) -> Loc {
    Loc {
        line: m.line() as u64,
        column: m.col() as u64 + 1,
    }
}

enum Frame {
    Seq {
        items: Vec<Node>,
        path: String,
        loc: Loc,
        anchor: usize,
    },
    Map {
        entries: Vec<Entry>,
        /// Key path of this mapping, for messages.
        path: String,
        /// The key waiting for its value.
        pending_key: Option<(String, Loc)>,
        /// `<<` merges, applied when the mapping ends.
        merges: Vec<Node>,
        loc: Loc,
        anchor: usize,
    },
}

/// Parses one YAML document into a [`Node`]; `None` for an empty document.
pub(crate) fn parse(text: &str, src: &Source) -> Result<Option<Node>, ConfigError> {
    let mut stack: Vec<Frame> = Vec::new();
    let mut anchors: HashMap<usize, Node> = HashMap::new();
    let mut root: Option<Node> = None;
    let mut documents = 0;
    let mut alias_budget: usize = 1_000_000;

    for event in Parser::new_from_str(text) {
        let (event, span) = event.map_err(|e| {
            src.error(
                Some(marker_loc(e.marker())),
                None,
                format!("invalid YAML: {}", e.info()),
                Some("check the indentation and quoting around this place".to_string()),
            )
        })?;
        let loc = loc_of(&span);
        let tag_loc = span.tag_start().map_or(loc, |m| marker_loc(&m));
        let node = match event {
            Event::DocumentStart(..) => {
                documents += 1;
                if documents > 1 {
                    return Err(src.error(
                        Some(loc),
                        None,
                        "more than one YAML document (`---`) in the file",
                        Some("keep one document per config file".to_string()),
                    ));
                }
                continue;
            }
            Event::Scalar(value, style, anchor, tag) => {
                check_tag(tag.as_deref(), tag_loc, src)?;
                let plain = style == ScalarStyle::Plain
                    && !tag
                        .as_deref()
                        .is_some_and(|t| t.is_yaml_core_schema_tag("str"));
                let kind = if plain && matches!(&*value, "" | "~" | "null" | "Null" | "NULL") {
                    Kind::Null
                } else {
                    Kind::Scalar {
                        text: value.into_owned(),
                    }
                };
                let node = Node { kind, loc };
                if anchor != 0 {
                    anchors.insert(anchor, node.clone());
                }
                node
            }
            Event::Alias(id) => match anchors.get(&id) {
                Some(node) => {
                    // Aliases are copied: bound the copies ("billion laughs").
                    alias_budget = alias_budget.saturating_sub(node_count(node));
                    if alias_budget == 0 {
                        return Err(src.error(
                            Some(loc),
                            None,
                            "YAML aliases expand to too many values",
                            Some("use fewer nested aliases".to_string()),
                        ));
                    }
                    node.clone()
                }
                None => {
                    return Err(src.error(
                        Some(loc),
                        None,
                        "alias to an unknown anchor",
                        Some("define the anchor (`&name`) before its alias (`*name`)".to_string()),
                    ));
                }
            },
            Event::SequenceStart(_, anchor, tag) => {
                check_tag(tag.as_deref(), tag_loc, src)?;
                let path = child_path(&stack);
                stack.push(Frame::Seq {
                    items: Vec::new(),
                    path,
                    loc,
                    anchor,
                });
                continue;
            }
            Event::MappingStart(_, anchor, tag) => {
                check_tag(tag.as_deref(), tag_loc, src)?;
                let path = child_path(&stack);
                stack.push(Frame::Map {
                    entries: Vec::new(),
                    path,
                    pending_key: None,
                    merges: Vec::new(),
                    loc,
                    anchor,
                });
                continue;
            }
            Event::SequenceEnd => match stack.pop() {
                Some(Frame::Seq {
                    items, loc, anchor, ..
                }) => {
                    let node = Node {
                        kind: Kind::Seq(items),
                        loc,
                    };
                    if anchor != 0 {
                        anchors.insert(anchor, node.clone());
                    }
                    node
                }
                _ => return Err(unbalanced(loc, src)),
            },
            Event::MappingEnd => match stack.pop() {
                Some(Frame::Map {
                    mut entries,
                    merges,
                    loc,
                    anchor,
                    ..
                }) => {
                    apply_merges(&mut entries, merges, src)?;
                    let node = Node {
                        kind: Kind::Map(entries),
                        loc,
                    };
                    if anchor != 0 {
                        anchors.insert(anchor, node.clone());
                    }
                    node
                }
                _ => return Err(unbalanced(loc, src)),
            },
            _ => continue,
        };
        // Attach the finished node to its parent.
        match stack.last_mut() {
            None => root = Some(node),
            Some(Frame::Seq { items, .. }) => items.push(node),
            Some(Frame::Map {
                entries,
                pending_key,
                merges,
                path,
                ..
            }) => match pending_key.take() {
                None => {
                    let key = match node.kind {
                        Kind::Scalar { text, .. } => text,
                        Kind::Null => String::new(),
                        _ => {
                            return Err(src.error(
                                Some(node.loc),
                                None,
                                "a key must be a single word, not a list or mapping",
                                None,
                            ));
                        }
                    };
                    if key != "<<"
                        && let Some(prev) = entries.iter().find(|e| e.key == key)
                    {
                        let place = if path.is_empty() {
                            "the top level".to_string()
                        } else {
                            format!("`{path}`")
                        };
                        return Err(src.error(
                            Some(node.loc),
                            Some(&join(path, &key)),
                            format!(
                                "duplicate key `{key}` at {place} (first at line {})",
                                prev.key_loc.line
                            ),
                            Some("keep one of them".to_string()),
                        ));
                    }
                    *pending_key = Some((key, node.loc));
                }
                Some((key, key_loc)) => {
                    if key == "<<" {
                        merges.push(node);
                    } else {
                        entries.push(Entry {
                            key,
                            key_loc,
                            value: node,
                        });
                    }
                }
            },
        }
    }
    Ok(root)
}

/// Core-schema tags (`!!str`, `!!int`, …) are fine; others (`!include`,
/// `!env`) would be silently ignored, so they are errors.
fn check_tag(tag: Option<&Tag>, loc: Loc, src: &Source) -> Result<(), ConfigError> {
    match tag {
        Some(t) if !t.is_yaml_core_schema() => Err(src.error(
            Some(loc),
            None,
            format!("unsupported YAML tag `{}`", t.original()),
            Some("remove the tag; use `$VAR` for values from the environment".to_string()),
        )),
        _ => Ok(()),
    }
}

fn node_count(node: &Node) -> usize {
    match &node.kind {
        Kind::Null | Kind::Scalar { .. } => 1,
        Kind::Seq(items) => 1 + items.iter().map(node_count).sum::<usize>(),
        Kind::Map(entries) => {
            1 + entries
                .iter()
                .map(|e| 1 + node_count(&e.value))
                .sum::<usize>()
        }
    }
}

/// The parser balances collection events; this is for the impossible case.
fn unbalanced(loc: Loc, src: &Source) -> ConfigError {
    src.error(Some(loc), None, "invalid YAML: unbalanced collection", None)
}

/// The key path of the collection about to start, from its parent's frame.
fn child_path(stack: &[Frame]) -> String {
    match stack.last() {
        None => String::new(),
        Some(Frame::Seq { items, path, .. }) => format!("{path}[{}]", items.len()),
        Some(Frame::Map {
            path, pending_key, ..
        }) => match pending_key {
            Some((key, _)) => join(path, key),
            None => path.clone(),
        },
    }
}

/// YAML merge keys (`<<: *defaults`): keys written in the mapping win.
fn apply_merges(
    entries: &mut Vec<Entry>,
    merges: Vec<Node>,
    src: &Source,
) -> Result<(), ConfigError> {
    for merge in merges {
        let maps = match merge.kind {
            Kind::Map(m) => vec![m],
            Kind::Seq(items) => {
                let mut maps = Vec::new();
                for item in items {
                    match item.kind {
                        Kind::Map(m) => maps.push(m),
                        _ => return Err(merge_error(item.loc, src)),
                    }
                }
                maps
            }
            _ => return Err(merge_error(merge.loc, src)),
        };
        for map in maps {
            for entry in map {
                if !entries.iter().any(|e| e.key == entry.key) {
                    entries.push(entry);
                }
            }
        }
    }
    Ok(())
}

fn merge_error(loc: Loc, src: &Source) -> ConfigError {
    src.error(
        Some(loc),
        None,
        "`<<` must merge a mapping or a list of mappings",
        Some("write `<<: *anchor` where `&anchor` names a mapping".to_string()),
    )
}

/// Looks up environment variables for `$VAR` expansion.
pub(crate) type EnvLookup<'a> = &'a dyn Fn(&str) -> Option<String>;

/// Reading context: the source (for messages), its text, and the environment.
pub(crate) struct Ctx<'a> {
    pub src: Source,
    pub env: EnvLookup<'a>,
    pub text: &'a str,
}

/// A value at a key path.
#[derive(Clone, Copy)]
pub(crate) struct Val<'a> {
    pub node: &'a Node,
    pub path: &'a str,
}

/// A mapping whose keys have been checked against the known ones.
pub(crate) struct Map<'a> {
    pub path: String,
    pub loc: Loc,
    entries: &'a [Entry],
    child_paths: Vec<String>,
}

impl<'a> Map<'a> {
    /// Opens `node` as a mapping at `path`, rejecting keys not in `known`.
    ///
    /// A `null` node (the key written with nothing after it) is an empty mapping.
    pub fn open(
        ctx: &Ctx,
        node: &'a Node,
        path: &str,
        known: &[&str],
    ) -> Result<Map<'a>, ConfigError> {
        Self::open_filtered(ctx, node, path, known, |_| false)
    }

    /// As [`Map::open`], also accepting keys for which `ignore` is true.
    pub fn open_filtered(
        ctx: &Ctx,
        node: &'a Node,
        path: &str,
        known: &[&str],
        ignore: impl Fn(&str) -> bool,
    ) -> Result<Map<'a>, ConfigError> {
        let entries: &[Entry] = match &node.kind {
            Kind::Map(entries) => entries,
            Kind::Null => &[],
            other => {
                return Err(ctx.src.at(
                    node.loc,
                    path,
                    format!(
                        "{} must be a mapping of keys, found {}",
                        subject(path),
                        other.describe()
                    ),
                    Some(format!(
                        "the keys of {} are {}",
                        subject(path),
                        backticked(known)
                    )),
                ));
            }
        };
        for entry in entries {
            if known.contains(&entry.key.as_str()) || ignore(&entry.key) {
                continue;
            }
            let hint = match closest(&entry.key, known) {
                Some(near) => format!("did you mean `{near}`?"),
                None => format!("the keys here are {}", backticked(known)),
            };
            let place = if path.is_empty() {
                "the top level".to_string()
            } else {
                subject(path)
            };
            return Err(ctx.src.at(
                entry.key_loc,
                &join(path, &entry.key),
                format!("unknown key `{}` at {place}", entry.key),
                Some(hint),
            ));
        }
        let child_paths = entries.iter().map(|e| join(path, &e.key)).collect();
        Ok(Map {
            path: path.to_string(),
            loc: node.loc,
            entries,
            child_paths,
        })
    }

    /// The value of `key`, if written and not null.
    pub fn get(&self, key: &str) -> Option<Val<'_>> {
        self.get_raw(key)
            .filter(|v| !matches!(v.node.kind, Kind::Null))
    }

    /// The value of `key` if written, null included.
    pub fn get_raw(&self, key: &str) -> Option<Val<'_>> {
        self.entries
            .iter()
            .zip(&self.child_paths)
            .find(|(e, _)| e.key == key)
            .map(|(e, p)| Val {
                node: &e.value,
                path: p,
            })
    }

    /// The position of `key` itself, if written.
    pub fn key_loc(&self, key: &str) -> Option<Loc> {
        self.entries
            .iter()
            .find(|e| e.key == key)
            .map(|e| e.key_loc)
    }

    /// A required value.
    pub fn require(&self, ctx: &Ctx, key: &str, example: &str) -> Result<Val<'_>, ConfigError> {
        self.get(key).ok_or_else(|| {
            let full = join(&self.path, key);
            let msg = match self.key_loc(key) {
                Some(_) => format!("`{full}` is empty"),
                None => format!("missing `{full}`"),
            };
            // A key missing at the top level has no line; deeper, point at its mapping.
            let loc = self
                .key_loc(key)
                .or_else(|| (!self.path.is_empty()).then_some(self.loc));
            ctx.src.error(
                loc,
                Some(&full),
                msg,
                Some(format!("add `{key}: {example}`")),
            )
        })
    }

    /// Entries in file order, with their paths.
    pub fn entries(&self) -> impl Iterator<Item = (&'a Entry, Val<'_>)> {
        self.entries.iter().zip(&self.child_paths).map(|(e, p)| {
            (
                e,
                Val {
                    node: &e.value,
                    path: p.as_str(),
                },
            )
        })
    }
}

pub(crate) fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_string()
    } else {
        format!("{path}.{key}")
    }
}

/// How a key path is named in a sentence: `` `a.b` ``, or "the file" at the top.
fn subject(path: &str) -> String {
    if path.is_empty() {
        "the file".to_string()
    } else {
        format!("`{path}`")
    }
}

impl<'a> Val<'a> {
    pub fn loc(&self) -> Loc {
        self.node.loc
    }

    fn type_error(&self, ctx: &Ctx, expected: &str, example: Option<String>) -> ConfigError {
        let key = self.path.rsplit('.').next().unwrap_or(self.path);
        ctx.src.at(
            self.node.loc,
            self.path,
            format!(
                "`{}` must be {expected}, found {}",
                self.path,
                self.node.kind.describe()
            ),
            example.map(|e| format!("write it as `{key}: {e}`")),
        )
    }

    /// The scalar's text, verbatim (no `$VAR` expansion).
    pub fn raw_str(&self, ctx: &Ctx) -> Result<&'a str, ConfigError> {
        match &self.node.kind {
            Kind::Scalar { text, .. } => Ok(text),
            _ => Err(self.type_error(ctx, "text", None)),
        }
    }

    /// The scalar's text with `$VAR` and `${VAR}` expanded.
    pub fn string(&self, ctx: &Ctx) -> Result<String, ConfigError> {
        let raw = self.raw_str(ctx)?;
        self.expand(ctx, raw)
    }

    pub fn expand(&self, ctx: &Ctx, raw: &str) -> Result<String, ConfigError> {
        expand_vars(raw, ctx.env)
            .map_err(|e| e.into_config_error(&ctx.src, self.node.loc, self.path))
    }

    /// A non-negative whole number.
    pub fn uint(&self, ctx: &Ctx) -> Result<u64, ConfigError> {
        let text = match &self.node.kind {
            Kind::Scalar { text, .. } => text.trim(),
            _ => return Err(self.type_error(ctx, "a whole number", Some("4".into()))),
        };
        let digits = text.strip_prefix('+').unwrap_or(text).replace('_', "");
        digits.parse::<u64>().map_err(|e| {
            if *e.kind() == std::num::IntErrorKind::PosOverflow {
                return ctx.src.at(
                    self.node.loc,
                    self.path,
                    format!("`{}` is too large: `{text}`", self.path),
                    Some("write the number this key is for, such as `4`".to_string()),
                );
            }
            ctx.src.at(
                self.node.loc,
                self.path,
                format!("`{}` must be a whole number, found `{text}`", self.path),
                Some("write a number such as `4`, without quotes or units".to_string()),
            )
        })
    }

    /// A whole number from `min` to `max`; `what` says what the bound is for
    /// (`CPUs per job`), in the message.
    pub fn u32_range(&self, ctx: &Ctx, min: u32, max: u32, what: &str) -> Result<u32, ConfigError> {
        let text = match &self.node.kind {
            Kind::Scalar { text, .. } => text.trim().to_string(),
            _ => String::new(),
        };
        let huge = {
            let digits = text.strip_prefix('+').unwrap_or(&text).replace('_', "");
            !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit())
        };
        let v = match self.uint(ctx) {
            Ok(v) => v,
            // Too large for any integer: still "too large", with the bound.
            Err(_) if huge => u64::MAX,
            Err(e) => return Err(e),
        };
        if v > u64::from(max) {
            return Err(ctx.src.at(
                self.node.loc,
                self.path,
                format!(
                    "`{}` is too large: `{text}`, more than the {max} {what} nfslurm accepts",
                    self.path
                ),
                Some(format!("ask for at most {max}")),
            ));
        }
        let v = v as u32;
        if v < min {
            return Err(ctx.src.at(
                self.node.loc,
                self.path,
                format!("`{}` must be at least {min}, found `{v}`", self.path),
                None,
            ));
        }
        Ok(v)
    }

    pub fn u32(&self, ctx: &Ctx) -> Result<u32, ConfigError> {
        let v = self.uint(ctx)?;
        u32::try_from(v).map_err(|_| {
            ctx.src.at(
                self.node.loc,
                self.path,
                format!("`{}` is too large: `{v}`", self.path),
                None,
            )
        })
    }

    /// A whole number of at least `min`.
    pub fn u32_min(&self, ctx: &Ctx, min: u32) -> Result<u32, ConfigError> {
        let v = self.u32(ctx)?;
        if v < min {
            return Err(ctx.src.at(
                self.node.loc,
                self.path,
                format!("`{}` must be at least {min}, found `{v}`", self.path),
                None,
            ));
        }
        Ok(v)
    }

    pub fn float(&self, ctx: &Ctx) -> Result<f64, ConfigError> {
        let text = match &self.node.kind {
            Kind::Scalar { text, .. } => text.trim(),
            _ => return Err(self.type_error(ctx, "a number", Some("1.5".into()))),
        };
        match text.parse::<f64>() {
            Ok(v) if v.is_finite() => Ok(v),
            _ => Err(ctx.src.at(
                self.node.loc,
                self.path,
                format!("`{}` must be a number, found `{text}`", self.path),
                Some("write a number such as `1.5`".to_string()),
            )),
        }
    }

    /// A number within `[min, max]` (`max` inclusive unless `max_open`).
    pub fn float_in(
        &self,
        ctx: &Ctx,
        min: f64,
        max: Option<f64>,
        rule: &str,
    ) -> Result<f64, ConfigError> {
        let v = self.float(ctx)?;
        if v < min || max.is_some_and(|m| v > m) {
            return Err(ctx.src.at(
                self.node.loc,
                self.path,
                format!("`{}` must be {rule}, found `{v}`", self.path),
                None,
            ));
        }
        Ok(v)
    }

    pub fn bool(&self, ctx: &Ctx) -> Result<bool, ConfigError> {
        let text = match &self.node.kind {
            Kind::Scalar { text, .. } => text.trim(),
            _ => return Err(self.type_error(ctx, "`true` or `false`", Some("true".into()))),
        };
        match text {
            "true" | "True" | "TRUE" => Ok(true),
            "false" | "False" | "FALSE" => Ok(false),
            _ => Err(ctx.src.at(
                self.node.loc,
                self.path,
                format!("`{}` must be `true` or `false`, found `{text}`", self.path),
                None,
            )),
        }
    }

    /// A duration in seconds (see [`parse_duration`]).
    pub fn duration(&self, ctx: &Ctx) -> Result<u64, ConfigError> {
        let text = match &self.node.kind {
            Kind::Scalar { text, .. } => text.as_str(),
            _ => return Err(self.type_error(ctx, "a duration", Some("\"02:00:00\"".into()))),
        };
        parse_duration(text).map_err(|e| {
            let message = if e.ends_with("too long") {
                format!("`{}`: {e}", self.path)
            } else {
                format!(
                    "`{}` is `{}`, which is not a duration",
                    self.path,
                    text.trim()
                )
            };
            ctx.src.at(
                self.node.loc,
                self.path,
                message,
                Some(format!("durations are written {DURATION_FORMS}")),
            )
        })
    }

    /// A memory size in MB (see [`parse_memory`]).
    pub fn memory(&self, ctx: &Ctx) -> Result<u64, ConfigError> {
        let text = match &self.node.kind {
            Kind::Scalar { text, .. } => text.as_str(),
            _ => return Err(self.type_error(ctx, "a memory size", Some("8G".into()))),
        };
        let mb = match parse_memory(text) {
            Ok(mb) => mb,
            Err(e) if e.ends_with("too large") => u64::MAX,
            Err(_) => {
                return Err(ctx.src.at(
                    self.node.loc,
                    self.path,
                    format!(
                        "`{}` is `{}`, which is not a memory size",
                        self.path,
                        text.trim()
                    ),
                    Some(format!("memory is written {MEMORY_FORMS}")),
                ));
            }
        };
        if mb > MAX_MEM_MB {
            return Err(ctx.src.at(
                self.node.loc,
                self.path,
                format!(
                    "`{}` is too large: `{}`, more than the 64T nfslurm accepts",
                    self.path,
                    text.trim()
                ),
                Some("ask for what one job can use on one node, such as `64G`".to_string()),
            ));
        }
        Ok(mb)
    }

    /// A time limit: a duration of at most 365 days.
    pub fn time_limit(&self, ctx: &Ctx) -> Result<u64, ConfigError> {
        let secs = self.duration(ctx)?;
        if secs > MAX_TIME_S {
            let text = match &self.node.kind {
                Kind::Scalar { text, .. } => text.trim().to_string(),
                _ => secs.to_string(),
            };
            return Err(ctx.src.at(
                self.node.loc,
                self.path,
                format!(
                    "`{}` is too long: `{text}`, more than the 365 days nfslurm accepts",
                    self.path
                ),
                Some("ask for what one job needs, such as `\"24:00:00\"` or `3d`".to_string()),
            ));
        }
        Ok(secs)
    }

    /// A list of scalars (a single scalar is a list of one), each with its
    /// position and path (`binds[1]`); not expanded.
    pub fn raw_list(&self, ctx: &Ctx) -> Result<Vec<(&'a str, Loc, String)>, ConfigError> {
        match &self.node.kind {
            Kind::Null => Ok(Vec::new()),
            Kind::Scalar { text, .. } => {
                Ok(vec![(text.as_str(), self.node.loc, self.path.to_string())])
            }
            Kind::Seq(items) => items
                .iter()
                .enumerate()
                .map(|(i, item)| match &item.kind {
                    Kind::Scalar { text, .. } => {
                        Ok((text.as_str(), item.loc, format!("{}[{i}]", self.path)))
                    }
                    other => Err(ctx.src.at(
                        item.loc,
                        &format!("{}[{i}]", self.path),
                        format!(
                            "`{}[{i}]` must be a single value, found {}",
                            self.path,
                            other.describe()
                        ),
                        None,
                    )),
                })
                .collect(),
            Kind::Map(_) => Err(self.type_error(ctx, "a list", Some("[a, b]".into()))),
        }
    }

    /// A list of strings with `$VAR` expanded.
    pub fn string_list(&self, ctx: &Ctx) -> Result<Vec<String>, ConfigError> {
        self.raw_list(ctx)?
            .into_iter()
            .map(|(text, loc, path)| {
                expand_vars(text, ctx.env).map_err(|e| e.into_config_error(&ctx.src, loc, &path))
            })
            .collect()
    }

    /// A mapping of environment variable names to values (values expanded).
    pub fn env_map(&self, ctx: &Ctx) -> Result<BTreeMap<String, String>, ConfigError> {
        let entries = match &self.node.kind {
            Kind::Null => return Ok(BTreeMap::new()),
            Kind::Map(entries) => entries,
            _ => {
                return Err(self.type_error(
                    ctx,
                    "a mapping of variable names to values",
                    Some("{ NAME: value }".into()),
                ));
            }
        };
        let mut out = BTreeMap::new();
        for entry in entries {
            let path = join(self.path, &entry.key);
            if !is_env_name(&entry.key) {
                return Err(ctx.src.at(
                    entry.key_loc,
                    &path,
                    format!("`{}` is not a valid environment variable name", entry.key),
                    Some("use letters, digits and `_`, not starting with a digit".to_string()),
                ));
            }
            let value = match &entry.value.kind {
                Kind::Scalar { text, .. } => expand_vars(text, ctx.env)
                    .map_err(|e| e.into_config_error(&ctx.src, entry.value.loc, &path))?,
                Kind::Null => String::new(),
                other => {
                    return Err(ctx.src.at(
                        entry.value.loc,
                        &path,
                        format!(
                            "`{path}` must be a single value, found {}",
                            other.describe()
                        ),
                        None,
                    ));
                }
            };
            out.insert(entry.key.clone(), value);
        }
        Ok(out)
    }

    /// For diagnostics outside this module.
    pub fn describe(&self) -> &'static str {
        self.node.kind.describe()
    }

    pub fn as_seq(&self) -> Option<&'a [Node]> {
        match &self.node.kind {
            Kind::Seq(items) => Some(items),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn src() -> Source {
        Source {
            name: "t.yaml".into(),
        }
    }

    #[test]
    fn keeps_order_locations_and_scalar_text() {
        let text = "b: 007\na:\n  c: [x, 'y']\n  d: ~\n";
        let root = parse(text, &src()).unwrap().unwrap();
        let Kind::Map(entries) = &root.kind else {
            panic!()
        };
        assert_eq!(entries[0].key, "b");
        assert!(matches!(&entries[0].value.kind, Kind::Scalar { text, .. } if text == "007"));
        assert_eq!(entries[1].key_loc, Loc { line: 2, column: 1 });
        let Kind::Map(inner) = &entries[1].value.kind else {
            panic!()
        };
        assert_eq!(inner[0].key_loc, Loc { line: 3, column: 3 });
        assert!(matches!(inner[1].value.kind, Kind::Null));
    }

    #[test]
    fn merges_and_aliases() {
        let text = "base: &b { x: 1, y: 2 }\nother:\n  <<: *b\n  y: 3\ncopy: *b\n";
        let root = parse(text, &src()).unwrap().unwrap();
        let Kind::Map(entries) = &root.kind else {
            panic!()
        };
        let Kind::Map(other) = &entries[1].value.kind else {
            panic!()
        };
        let keys: Vec<_> = other.iter().map(|e| e.key.as_str()).collect();
        assert_eq!(keys, ["y", "x"]);
        assert!(matches!(&other[0].value.kind, Kind::Scalar { text, .. } if text == "3"));
        assert!(matches!(&entries[2].value.kind, Kind::Map(m) if m.len() == 2));
    }

    #[test]
    fn duplicate_keys_are_errors() {
        let err = parse("a: 1\nb: 2\na: 3\n", &src()).unwrap_err();
        assert_eq!(
            err.report(),
            "t.yaml:3:1: duplicate key `a` at the top level (first at line 1)\nhint: keep one of them"
        );
    }

    #[test]
    fn syntax_errors_have_a_location() {
        let err = parse("a: [1, 2\nb: 3\n", &src()).unwrap_err();
        let d = err.diagnostic().unwrap();
        assert!(d.line.is_some());
        assert!(d.message.starts_with("invalid YAML"));
    }

    #[test]
    fn tags() {
        let root = parse("a: !!str null\nb: !!int 3\n", &src())
            .unwrap()
            .unwrap();
        let Kind::Map(entries) = &root.kind else {
            panic!()
        };
        assert!(matches!(&entries[0].value.kind, Kind::Scalar { text } if text == "null"));
        let err = parse("a: !include other.yaml\n", &src()).unwrap_err();
        assert_eq!(
            err.report(),
            "t.yaml:1:4: unsupported YAML tag `!include`\n\
             hint: remove the tag; use `$VAR` for values from the environment"
        );
    }

    #[test]
    fn alias_bombs_are_stopped() {
        let mut text = String::from("a0: &a0 [x, x, x, x, x, x, x, x, x, x]\n");
        for i in 1..9 {
            let p = i - 1;
            text.push_str(&format!(
                "a{i}: &a{i} [*a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}]\n"
            ));
        }
        let err = parse(&text, &src()).unwrap_err();
        assert!(err.to_string().contains("too many values"), "{err}");
    }

    #[test]
    fn empty_document_is_none() {
        assert!(parse("", &src()).unwrap().is_none());
        assert!(parse("# only a comment\n", &src()).unwrap().is_none());
    }
}
