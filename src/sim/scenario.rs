//! Scenario files: what `gntsim` runs.
//!
//! A scenario is a TOML document (see `docs/simulator.md` for every field). Parsing happens in
//! two stages, and both report errors as a [`ScenarioError`] naming the line, the column and
//! the field path (`thread[1].granters[0]`), never a panic:
//!
//! 1. [`toml`] + serde turn the text into the raw `*Spec` structs (types, unknown fields,
//!    missing fields);
//! 2. [`Scenario::parse`] resolves names and checks what types cannot express (unknown
//!    domains, vCPUs out of range, a vCPU driven by two threads, ranges, weights).
//!
//! The result is a [`Scenario`]: the raw spec (echoed in JSON reports) plus the resolved
//! [`Plan`] the engine runs.

use crate::abi::SHGNT_PER_PAGE_V1;
use crate::domain::{DomainConfig, DomainKind};
use crate::iommu::IommuMode;
use crate::quota::MapLimit;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::ops::Range;
use toml::Spanned;

// ---------------------------------------------------------------------------------------------
// Raw format (serde)
// ---------------------------------------------------------------------------------------------

/// The top level of a scenario file.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ScenarioSpec {
    /// Scenario name (defaults to the file name without extension).
    #[serde(default)]
    pub name: Option<String>,
    /// One line saying what the scenario models.
    #[serde(default)]
    pub description: String,
    /// Run length per design, in seconds (`--seconds` overrides).
    #[serde(default = "default_seconds")]
    pub seconds: Spanned<f64>,
    /// Seed of every random choice (`--seed` overrides).
    #[serde(default = "default_seed")]
    pub seed: u64,
    /// Domains created before the run.
    #[serde(default)]
    pub domain: Vec<Spanned<DomainSpec>>,
    /// Workload threads.
    #[serde(default)]
    pub thread: Vec<Spanned<ThreadSpec>>,
    /// Timed events.
    #[serde(default)]
    pub event: Vec<Spanned<EventSpec>>,
    /// Domain churn: short-lived instances of a template domain.
    #[serde(default)]
    pub churn: Vec<Spanned<ChurnSpec>>,
}

fn default_seconds() -> Spanned<f64> {
    Spanned::new(0..0, 1.0)
}
fn default_seed() -> u64 {
    1
}

/// Paging mode in scenario files.
#[derive(Clone, Copy, Debug, Deserialize, Serialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum KindSpec {
    /// Paravirtualised.
    #[default]
    Pv,
    /// Translated.
    Hvm,
}

/// IOMMU mode in scenario files.
#[derive(Clone, Copy, Debug, Deserialize, Serialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum IommuSpec {
    /// No IOMMU work on grant maps.
    #[default]
    Off,
    /// Strict: every grant map of a PV domain updates its IOMMU.
    Strict,
}

/// `map_limit`: `"default"`, `"off"` or a number.
#[derive(Clone, Copy, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(untagged)]
pub enum MapLimitSpec {
    /// At most this many live maps.
    Limit(u32),
    /// `"default"` or `"off"`.
    Word(MapLimitWord),
}

/// The words `map_limit` accepts.
#[derive(Clone, Copy, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum MapLimitWord {
    /// [`MapLimit::Default`].
    Default,
    /// [`MapLimit::Off`].
    Off,
}

impl Default for MapLimitSpec {
    fn default() -> Self {
        MapLimitSpec::Word(MapLimitWord::Default)
    }
}

/// A `[[domain]]` entry.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct DomainSpec {
    /// Unique name (with `count > 1`: the group name; instances are `name0`, `name1`, ...).
    pub name: Spanned<String>,
    /// Number of identical instances.
    #[serde(default = "one_u16")]
    pub count: Spanned<u16>,
    /// vCPUs.
    #[serde(default = "one_u16")]
    pub vcpus: Spanned<u16>,
    /// `"pv"` or `"hvm"`.
    #[serde(default)]
    pub kind: KindSpec,
    /// Guest frames populated at creation (gfn 0 .. memory_pages).
    #[serde(default = "default_memory")]
    pub memory_pages: Spanned<u64>,
    /// `max_grant_frames`.
    #[serde(default)]
    pub max_grant_frames: Option<Spanned<u32>>,
    /// `max_maptrack_frames`.
    #[serde(default = "default_maptrack")]
    pub max_maptrack_frames: u32,
    /// `"default"`, `"off"` or a number of live maps.
    #[serde(default)]
    pub map_limit: MapLimitSpec,
    /// `"off"` or `"strict"`.
    #[serde(default)]
    pub iommu: IommuSpec,
    /// Control domain (may query and set up other domains' tables).
    #[serde(default)]
    pub privileged: bool,
    /// Host address-space size in pages.
    #[serde(default = "default_host_pages")]
    pub host_pages: Spanned<u64>,
    /// Grant frames set up at creation (default: enough for the `grant` blocks).
    #[serde(default)]
    pub grant_frames: Option<Spanned<u32>>,
    /// `false`: not created at start; a template for `[[churn]]`.
    #[serde(default = "yes")]
    pub spawn: bool,
    /// Grants made at creation.
    #[serde(default)]
    pub grant: Vec<Spanned<GrantSpec>>,
}

fn zero_u16() -> Spanned<u16> {
    Spanned::new(0..0, 0)
}
fn one_u16() -> Spanned<u16> {
    Spanned::new(0..0, 1)
}
fn default_memory() -> Spanned<u64> {
    Spanned::new(0..0, 256)
}
fn default_maptrack() -> u32 {
    crate::abi::DEFAULT_MAX_MAPTRACK_FRAMES
}
fn default_host_pages() -> Spanned<u64> {
    Spanned::new(0..0, 1 << 20)
}
fn yes() -> bool {
    true
}

/// A `[[domain.grant]]` block: refs `refs[0] .. refs[1]` granted to `to`.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct GrantSpec {
    /// The grantee (one domain).
    pub to: Spanned<String>,
    /// `[first, end)` of the refs.
    pub refs: Spanned<[u32; 2]>,
    /// Ref `r` is granted read-only iff `r % readonly_every == 0` (0: none).
    #[serde(default)]
    pub readonly_every: u32,
}

/// Weights of the operations a thread picks from.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct MixSpec {
    /// Map a batch and keep the mappings (up to `max_held`).
    #[serde(default)]
    pub map: f64,
    /// Unmap the oldest held batch.
    #[serde(default)]
    pub unmap: f64,
    /// One I/O request: map a batch, touch it, unmap it (or reuse persistent mappings).
    #[serde(default)]
    pub request: f64,
    /// A batch of `GNTTABOP_copy` elements.
    #[serde(default)]
    pub copy: f64,
    /// One `GNTTABOP_query_size`.
    #[serde(default)]
    pub query: f64,
    /// Guest side: grant a free ref of the thread's domain.
    #[serde(default)]
    pub grant: f64,
    /// Guest side: end access to a granted ref.
    #[serde(default)]
    pub end_access: f64,
    /// Guest side: end access to a ref and grant it again with a fresh frame.
    #[serde(default)]
    pub regrant: f64,
    /// Adversarial guest side: rewrite one of the domain's own shared entries.
    #[serde(default)]
    pub flip: f64,
    /// Adversarial mapper: unmap with forged handles, map bad refs.
    #[serde(default)]
    pub forge: f64,
}

/// Which refs a thread picks, and how skewed.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RefsSpec {
    /// `[first, end)` (default: the refs the granters grant to the thread's domain).
    #[serde(default)]
    pub range: Option<Spanned<[u32; 2]>>,
    /// `[share of the range, share of picks]` for the hot set (the start of the range).
    #[serde(default)]
    pub hot: Option<Spanned<[f64; 2]>>,
    /// `[share of the range, share of picks]` for the warm set (after the hot set).
    #[serde(default)]
    pub warm: Option<Spanned<[f64; 2]>>,
}

/// Map flags in scenario files.
#[derive(Clone, Copy, Debug, Deserialize, Serialize, PartialEq, Eq, PartialOrd, Ord)]
#[serde(rename_all = "lowercase")]
pub enum FlagSpec {
    /// `GNTMAP_host_map`.
    Host,
    /// `GNTMAP_device_map`.
    Device,
}

/// When a map asks for `GNTMAP_readonly`.
#[derive(Clone, Copy, Debug, Deserialize, Serialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum ReadonlySpec {
    /// Iff the grant is read-only (what a backend learns from the ring).
    #[default]
    Match,
    /// Always.
    Always,
    /// Never (maps of read-only grants fail).
    Never,
}

/// Direction of copies.
#[derive(Clone, Copy, Debug, Deserialize, Serialize, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
pub enum CopyDir {
    /// Grant -> the thread's own frame (netback transmit).
    #[default]
    FromGrant,
    /// Own frame -> grant (netback receive); read-only grants are copied from instead.
    ToGrant,
    /// Either, at random.
    Both,
}

/// Copy element sizes and direction.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct CopySpec {
    /// Smallest element, bytes.
    #[serde(default = "copy_min")]
    pub min: u16,
    /// Largest element, bytes (at most 4096).
    #[serde(default = "copy_max")]
    pub max: u16,
    /// Direction.
    #[serde(default)]
    pub direction: CopyDir,
}

fn copy_min() -> u16 {
    64
}
fn copy_max() -> u16 {
    1514
}

impl Default for CopySpec {
    fn default() -> Self {
        Self {
            min: copy_min(),
            max: copy_max(),
            direction: CopyDir::default(),
        }
    }
}

/// A `[[thread]]` entry: one OS thread driving one vCPU (or, for guest-side-only mixes, the
/// guest kernels of a domain or group).
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ThreadSpec {
    /// The domain (a group only for guest-side-only mixes).
    pub domain: Spanned<String>,
    /// The vCPU it runs (hypercall operations).
    #[serde(default = "zero_u16")]
    pub vcpu: Spanned<u16>,
    /// Operation weights.
    pub mix: Spanned<MixSpec>,
    /// Elements per map/unmap/copy hypercall.
    #[serde(default = "default_batch")]
    pub batch: Spanned<u32>,
    /// Stop after this many operations (0: run until the time is up).
    #[serde(default)]
    pub ops: u64,
    /// Domains or groups whose grants map/copy/forge pick from.
    #[serde(default)]
    pub granters: Vec<Spanned<String>>,
    /// Which refs.
    #[serde(default)]
    pub refs: RefsSpec,
    /// Map flags.
    #[serde(default = "default_flags")]
    pub flags: Spanned<Vec<FlagSpec>>,
    /// When maps ask for read-only.
    #[serde(default)]
    pub readonly: ReadonlySpec,
    /// `request`: keep mappings and reuse them (blkback persistent grants).
    #[serde(default)]
    pub persistent: bool,
    /// Held mappings (`map`) or persistent cache size (`request`).
    #[serde(default = "default_held")]
    pub max_held: Spanned<u32>,
    /// Bytes read through every new mapping (0: none).
    #[serde(default = "zero_u16")]
    pub touch: Spanned<u16>,
    /// Copy sizes and direction.
    #[serde(default)]
    pub copy: CopySpec,
    /// Target of `query`: a domain name, or `"self"`.
    #[serde(default = "default_query")]
    pub query: Spanned<String>,
    /// Yield the CPU after every operation.
    #[serde(default, rename = "yield")]
    pub yield_each: bool,
}

fn default_batch() -> Spanned<u32> {
    Spanned::new(0..0, 8)
}
fn default_flags() -> Spanned<Vec<FlagSpec>> {
    Spanned::new(0..0, vec![FlagSpec::Host])
}
fn default_held() -> Spanned<u32> {
    Spanned::new(0..0, 1024)
}
fn default_query() -> Spanned<String> {
    Spanned::new(0..0, "self".to_string())
}

/// When an event fires: seconds, or `"NN%"` of the run.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(untagged)]
pub enum AtSpec {
    /// Seconds after the start.
    Seconds(f64),
    /// `"NN%"` of the run length.
    Percent(String),
}

/// Event kinds.
#[derive(Clone, Copy, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum EventKind {
    /// `hv.kill_domain` + the teardown's steps, each timed.
    Destroy,
    /// `GNTTABOP_setup_table` growing the domain's table to `frames`.
    Grow,
    /// The domain rewrites `count` of its shared entries at once.
    Flip,
    /// `by` issues `count` forged unmaps and bad maps against `domain`'s grants.
    Forge,
}

/// An `[[event]]` entry.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct EventSpec {
    /// When.
    pub at: Spanned<AtSpec>,
    /// What.
    pub kind: EventKind,
    /// The domain acted on.
    pub domain: Spanned<String>,
    /// `destroy`: microseconds to sleep between teardown steps (0: back to back).
    #[serde(default)]
    pub step_gap_us: u64,
    /// `grow`: the new number of grant frames.
    #[serde(default)]
    pub frames: Option<Spanned<u32>>,
    /// `grow`/`forge`: the domain issuing the hypercalls (default: `domain` for grow).
    #[serde(default)]
    pub by: Option<Spanned<String>>,
    /// vCPU of `by` (default: its last vCPU).
    #[serde(default)]
    pub vcpu: Option<Spanned<u16>>,
    /// `flip`/`forge`: entries rewritten or operations forged.
    #[serde(default = "default_count")]
    pub count: u32,
}

fn default_count() -> u32 {
    64
}

/// A `[[churn]]` entry.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ChurnSpec {
    /// A `[[domain]]` with `spawn = false`; instances are `<template>-<n>`, and the template's
    /// name works as a group that always means the live instances.
    pub template: Spanned<String>,
    /// Instances alive at once.
    #[serde(default = "default_live")]
    pub live: Spanned<u32>,
    /// Lifetime of each instance in milliseconds.
    #[serde(default = "default_lifetime")]
    pub lifetime_ms: Spanned<u64>,
}

fn default_live() -> Spanned<u32> {
    Spanned::new(0..0, 4)
}
fn default_lifetime() -> Spanned<u64> {
    Spanned::new(0..0, 20)
}

// ---------------------------------------------------------------------------------------------
// Errors
// ---------------------------------------------------------------------------------------------

/// A scenario that cannot be run, with where and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ScenarioError {
    /// File name or `builtin:<name>`.
    pub origin: String,
    /// 1-based line (0 when the error has no position, e.g. an unreadable file).
    pub line: usize,
    /// 1-based column.
    pub column: usize,
    /// Field path (`thread[1].granters[0]`), empty if unknown.
    pub field: String,
    /// What is wrong.
    pub message: String,
    /// The offending source line.
    pub source_line: String,
}

impl fmt::Display for ScenarioError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.line == 0 {
            return write!(f, "{}: {}", self.origin, self.message);
        }
        write!(f, "{}:{}:{}: ", self.origin, self.line, self.column)?;
        if !self.field.is_empty() {
            write!(f, "field `{}`: ", self.field)?;
        }
        writeln!(f, "{}", self.message)?;
        let gutter = self.line.to_string().len();
        writeln!(f, "{:>gutter$} |", "")?;
        writeln!(f, "{} | {}", self.line, self.source_line)?;
        write!(
            f,
            "{:>gutter$} | {:>col$}^",
            "",
            "",
            col = self.column.saturating_sub(1)
        )
    }
}

impl std::error::Error for ScenarioError {}

/// 1-based (line, column) of byte offset `off`.
fn line_col(src: &str, off: usize) -> (usize, usize) {
    let off = off.min(src.len());
    let before = &src[..off];
    let line = before.matches('\n').count() + 1;
    let col = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, col)
}

/// The field path at byte offset `off`: the enclosing `[table]` / `[[array]]` header (with
/// the array index) and the keys leading to the offset on its line (inline tables included).
pub(crate) fn field_path_at(src: &str, off: usize, include_header_line: bool) -> String {
    let off = off.min(src.len());
    let mut header: Vec<String> = Vec::new();
    let mut counters: BTreeMap<String, usize> = BTreeMap::new();
    let line_start = src[..off].rfind('\n').map_or(0, |i| i + 1);
    let line_end = src[off..].find('\n').map_or(src.len(), |i| off + i);
    let this_line = strip_comment(&src[line_start..line_end]).trim();
    // A table's own header is where toml reports its missing fields.
    let on_header = include_header_line && this_line.starts_with('[');
    let upto = if on_header { line_end } else { line_start };
    for line in src[..upto].lines() {
        let t = strip_comment(line).trim();
        if let Some(name) = t.strip_prefix("[[").and_then(|s| s.strip_suffix("]]")) {
            let name = name.trim().to_string();
            let idx = counters.entry(name.clone()).or_insert(0);
            let i = *idx;
            *idx += 1;
            // Nested arrays restart their count under a new parent element.
            let prefix = format!("{name}.");
            counters.retain(|k, _| !k.starts_with(&prefix));
            header = indexed_path(&name, &counters, i);
        } else if let Some(name) = t.strip_prefix('[').and_then(|s| s.strip_suffix(']')) {
            let name = name.trim().to_string();
            header = indexed_path(&name, &counters, usize::MAX);
        }
    }
    if on_header {
        return header.join(".");
    }
    // Keys on the error line up to the offset.
    let line = &src[line_start..off];
    let mut stack: Vec<(usize, String)> = Vec::new();
    let mut depth = 0usize;
    let mut idx_stack: Vec<usize> = Vec::new();
    let bytes = line.as_bytes();
    let mut i = 0;
    let mut in_str = false;
    while i < bytes.len() {
        let c = bytes[i] as char;
        if in_str {
            if c == '"' {
                in_str = false;
            }
            i += 1;
            continue;
        }
        match c {
            '"' => in_str = true,
            '{' => depth += 1,
            '}' => {
                stack.retain(|(d, _)| *d < depth);
                depth = depth.saturating_sub(1);
            }
            '[' if stack.last().is_some_and(|(d, _)| *d == depth) => {
                idx_stack.push(0);
            }
            ']' => {
                idx_stack.pop();
            }
            ',' => {
                if let Some(n) = idx_stack.last_mut() {
                    *n += 1;
                } else {
                    stack.retain(|(d, _)| *d < depth);
                }
            }
            '=' => {
                let key: String = line[..i]
                    .trim_end()
                    .rsplit(|ch: char| ch == '{' || ch == ',' || ch.is_whitespace())
                    .next()
                    .unwrap_or("")
                    .trim_matches('"')
                    .to_string();
                stack.retain(|(d, _)| *d < depth);
                if !key.is_empty() {
                    stack.push((depth, key));
                }
                idx_stack.clear();
            }
            _ => {}
        }
        i += 1;
    }
    let mut path = header;
    path.extend(stack.into_iter().map(|(_, k)| k));
    let mut s = path.join(".");
    for n in idx_stack {
        s.push_str(&format!("[{n}]"));
    }
    s
}

fn strip_comment(line: &str) -> &str {
    let mut in_str = false;
    for (i, c) in line.char_indices() {
        match c {
            '"' => in_str = !in_str,
            '#' if !in_str => return &line[..i],
            _ => {}
        }
    }
    line
}

/// `a.b.c` with the array indices of every prefix that is an array of tables; `own` is the
/// index of the full path itself (usize::MAX: not an array element).
fn indexed_path(name: &str, counters: &BTreeMap<String, usize>, own: usize) -> Vec<String> {
    let parts: Vec<&str> = name.split('.').map(str::trim).collect();
    let mut out = Vec::new();
    for k in 0..parts.len() {
        let prefix = parts[..=k].join(".");
        let mut seg = parts[k].to_string();
        if k + 1 == parts.len() && own != usize::MAX {
            seg.push_str(&format!("[{own}]"));
        } else if k + 1 < parts.len() {
            if let Some(n) = counters.get(&prefix) {
                seg.push_str(&format!("[{}]", n.saturating_sub(1)));
            }
        }
        out.push(seg);
    }
    out
}

struct Ctx<'a> {
    src: &'a str,
    origin: &'a str,
}

impl Ctx<'_> {
    /// An error at `span` for `field`.
    fn err(
        &self,
        span: Range<usize>,
        field: impl Into<String>,
        msg: impl Into<String>,
    ) -> ScenarioError {
        let (line, column) = if span == (0..0) {
            (0, 0)
        } else {
            line_col(self.src, span.start)
        };
        let source_line = if line > 0 {
            self.src.lines().nth(line - 1).unwrap_or("").to_string()
        } else {
            String::new()
        };
        ScenarioError {
            origin: self.origin.to_string(),
            line,
            column,
            field: field.into(),
            message: msg.into(),
            source_line,
        }
    }
    /// An error at `span`, or at `fallback` (the enclosing table) when `span` is a default.
    fn err_or(
        &self,
        span: Range<usize>,
        fallback: Range<usize>,
        field: impl Into<String>,
        msg: impl Into<String>,
    ) -> ScenarioError {
        self.err(if span == (0..0) { fallback } else { span }, field, msg)
    }
}

// ---------------------------------------------------------------------------------------------
// Resolved plan
// ---------------------------------------------------------------------------------------------

/// Refs `first..end` of a domain granted to plan domain `to`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GrantBlock {
    /// Plan index of the grantee.
    pub to: usize,
    /// First ref.
    pub first: u32,
    /// One past the last ref.
    pub end: u32,
    /// Read-only iff `r % readonly_every == 0` (0: never).
    pub readonly_every: u32,
}

impl GrantBlock {
    /// Whether ref `r` of this block is granted read-only.
    pub fn readonly(&self, r: u32) -> bool {
        self.readonly_every != 0 && r % self.readonly_every == 0
    }
}

/// One domain (instance or churn template).
#[derive(Clone, Debug)]
pub struct DomainPlan {
    /// Instance name (templates: the template name).
    pub name: String,
    /// The library configuration.
    pub config: DomainConfig,
    /// Frames to set up at creation.
    pub grant_frames: u32,
    /// Grants made at creation.
    pub grants: Vec<GrantBlock>,
    /// Created at start (false: churn template).
    pub spawn: bool,
    /// Rewrites its own entries (flip ops or events): exempt from invariant 4.
    pub adversarial: bool,
}

impl DomainPlan {
    /// Whether ref `r` is granted read-only (false if not in any block).
    pub fn readonly(&self, r: u32) -> bool {
        self.grants
            .iter()
            .find(|b| (b.first..b.end).contains(&r))
            .is_some_and(|b| b.readonly(r))
    }
}

/// A name a thread refers to: one domain, or the live instances of a churn template.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Source {
    /// A spawned domain (plan index).
    Domain(usize),
    /// The live instances of churn entry `i`.
    Churn(usize),
}

/// Operation kinds of a mix.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum OpKind {
    /// See [`MixSpec::map`].
    Map,
    /// See [`MixSpec::unmap`].
    Unmap,
    /// See [`MixSpec::request`].
    Request,
    /// See [`MixSpec::copy`].
    Copy,
    /// See [`MixSpec::query`].
    Query,
    /// See [`MixSpec::grant`].
    Grant,
    /// See [`MixSpec::end_access`].
    EndAccess,
    /// See [`MixSpec::regrant`].
    Regrant,
    /// See [`MixSpec::flip`].
    Flip,
    /// See [`MixSpec::forge`].
    Forge,
}

impl OpKind {
    /// Whether the operation issues hypercalls (needs a vCPU).
    pub fn hypercall(self) -> bool {
        !matches!(
            self,
            OpKind::Grant | OpKind::EndAccess | OpKind::Regrant | OpKind::Flip
        )
    }
    /// Whether the operation picks grants of `granters`.
    pub fn needs_granters(self) -> bool {
        matches!(
            self,
            OpKind::Map | OpKind::Request | OpKind::Copy | OpKind::Forge
        )
    }
}

/// A resolved thread.
#[derive(Clone, Debug)]
pub struct ThreadPlan {
    /// Index in the file.
    pub index: usize,
    /// Plan indices of the domains it acts for (one unless guest-side only).
    pub domains: Vec<usize>,
    /// The vCPU (meaningful with hypercall ops).
    pub vcpu: u16,
    /// Cumulative weights, ascending, with their kinds.
    pub mix: Vec<(f64, OpKind)>,
    /// Batch size.
    pub batch: u32,
    /// Operation cap (0: none).
    pub ops: u64,
    /// Where map/copy/forge pick grants.
    pub granters: Vec<Source>,
    /// `[first, end)` of refs picked.
    pub refs: (u32, u32),
    /// Hot set: (share of range, share of picks).
    pub hot: (f64, f64),
    /// Warm set: (share of range, share of picks).
    pub warm: (f64, f64),
    /// Map with host_map.
    pub host: bool,
    /// Map with device_map.
    pub device: bool,
    /// Read-only policy.
    pub readonly: ReadonlySpec,
    /// Persistent requests.
    pub persistent: bool,
    /// Held mappings bound.
    pub max_held: u32,
    /// Bytes touched per new mapping.
    pub touch: u16,
    /// Copy sizes and direction.
    pub copy: CopySpec,
    /// `query` target: None = self.
    pub query: Option<usize>,
    /// Yield after each op.
    pub yield_each: bool,
    /// First host page of this thread's window.
    pub window_base: u64,
    /// Pages in the window.
    pub window_pages: u64,
}

impl ThreadPlan {
    /// Whether any op of the mix issues hypercalls.
    pub fn needs_vcpu(&self) -> bool {
        self.mix.iter().any(|(_, k)| k.hypercall())
    }
    /// Whether the mix contains `k`.
    pub fn has(&self, k: OpKind) -> bool {
        self.mix.iter().any(|(_, x)| *x == k)
    }
}

/// A resolved event.
#[derive(Clone, Debug)]
pub struct EventPlan {
    /// Index in the file.
    pub index: usize,
    /// When (`at_fraction` of the run, or `at_seconds`).
    pub at: When,
    /// What.
    pub kind: EventKind,
    /// Plan index of the domain acted on.
    pub domain: usize,
    /// Issuer and vCPU for grow and forge.
    pub by: Option<(usize, u16)>,
    /// Destroy: gap between steps.
    pub step_gap_us: u64,
    /// Grow: frames.
    pub frames: u32,
    /// Flip/forge count.
    pub count: u32,
}

/// When an event fires.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum When {
    /// Seconds after the start.
    Seconds(f64),
    /// Fraction of the run length.
    Fraction(f64),
}

impl When {
    /// Seconds after the start for a run of `run_secs`.
    pub fn seconds(self, run_secs: f64) -> f64 {
        match self {
            When::Seconds(s) => s,
            When::Fraction(f) => f * run_secs,
        }
    }
}

/// A resolved churn entry.
#[derive(Clone, Debug)]
pub struct ChurnPlan {
    /// Plan index of the template.
    pub template: usize,
    /// Instances alive at once.
    pub live: u32,
    /// Lifetime of each.
    pub lifetime_ms: u64,
}

/// What the engine runs.
#[derive(Clone, Debug)]
pub struct Plan {
    /// Domains: spawned instances and templates.
    pub domains: Vec<DomainPlan>,
    /// Threads.
    pub threads: Vec<ThreadPlan>,
    /// Events, sorted by file order (the engine sorts by time).
    pub events: Vec<EventPlan>,
    /// Churn entries.
    pub churn: Vec<ChurnPlan>,
}

/// A parsed, validated scenario.
#[derive(Clone, Debug)]
pub struct Scenario {
    /// Name.
    pub name: String,
    /// Where it came from (`builtin:<name>` or a path).
    pub origin: String,
    /// The text it was parsed from.
    pub source: String,
    /// The raw spec (echoed in JSON).
    pub spec: ScenarioSpec,
    /// The resolved plan.
    pub plan: Plan,
}

impl Scenario {
    /// Parses and validates scenario text. `origin` names it in errors; `default_name` is used
    /// when the file has no `name`.
    pub fn parse(src: &str, origin: &str, default_name: &str) -> Result<Scenario, ScenarioError> {
        let cx = Ctx { src, origin };
        let spec: ScenarioSpec = toml::from_str(src).map_err(|e| {
            let span = e.span().unwrap_or(0..0);
            let msg = e.message().trim();
            let field = if span == (0..0) {
                String::new()
            } else {
                field_path_at(src, span.start, msg.starts_with("missing field"))
            };
            let mut err = cx.err(span.clone(), field, msg.to_string());
            if err.line == 0 && !src.is_empty() && e.span().is_some() {
                // Offset 0: the first line.
                err.line = 1;
                err.column = 1;
                err.source_line = src.lines().next().unwrap_or("").to_string();
            }
            err
        })?;
        let plan = resolve(&cx, &spec)?;
        Ok(Scenario {
            name: spec
                .name
                .clone()
                .unwrap_or_else(|| default_name.to_string()),
            origin: origin.to_string(),
            source: src.to_string(),
            spec,
            plan,
        })
    }

    /// Reads and parses a scenario file.
    pub fn from_file(path: &std::path::Path) -> Result<Scenario, ScenarioError> {
        let origin = path.display().to_string();
        let src = std::fs::read_to_string(path).map_err(|e| ScenarioError {
            origin: origin.clone(),
            line: 0,
            column: 0,
            field: String::new(),
            message: format!("cannot read the file: {e}"),
            source_line: String::new(),
        })?;
        let stem = path
            .file_stem()
            .and_then(|s| s.to_str())
            .unwrap_or("scenario");
        Scenario::parse(&src, &origin, stem)
    }

    /// Run length in seconds.
    pub fn seconds(&self) -> f64 {
        *self.spec.seconds.get_ref()
    }

    /// The one-line description.
    pub fn description(&self) -> &str {
        &self.spec.description
    }
}

/// How names resolve.
#[derive(Clone, Debug)]
enum Named {
    /// One spawned domain.
    One(usize),
    /// A `count > 1` group of spawned domains.
    Group(Vec<usize>),
    /// A churn template (spawn = false); the churn entry index if it has one.
    Template(usize),
}

fn resolve(cx: &Ctx<'_>, spec: &ScenarioSpec) -> Result<Plan, ScenarioError> {
    let secs = *spec.seconds.get_ref();
    if !(secs.is_finite() && secs > 0.0) {
        return Err(cx.err(
            spec.seconds.span(),
            "seconds",
            "must be a positive number of seconds",
        ));
    }
    if spec.domain.is_empty() {
        return Err(cx.err(0..0, "domain", "a scenario needs at least one [[domain]]"));
    }

    // Domains and names.
    let mut domains: Vec<DomainPlan> = Vec::new();
    let mut names: BTreeMap<String, Named> = BTreeMap::new();
    let mut spec_of: Vec<usize> = Vec::new(); // plan index -> spec index
    let mut first_of_spec: Vec<usize> = Vec::new();
    for (si, ds) in spec.domain.iter().enumerate() {
        let whole = ds.span();
        let ds = ds.get_ref();
        let f = |k: &str| format!("domain[{si}].{k}");
        let name = ds.name.get_ref().trim().to_string();
        if name.is_empty()
            || !name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
        {
            return Err(cx.err(
                ds.name.span(),
                f("name"),
                "names use letters, digits, '-' and '_'",
            ));
        }
        if name == "self" {
            return Err(cx.err(ds.name.span(), f("name"), "\"self\" is reserved"));
        }
        let count = *ds.count.get_ref();
        if count == 0 {
            return Err(cx.err_or(
                ds.count.span(),
                whole.clone(),
                f("count"),
                "must be at least 1",
            ));
        }
        if !ds.spawn && count != 1 {
            return Err(cx.err_or(
                ds.count.span(),
                whole.clone(),
                f("count"),
                "a template (spawn = false) has count 1",
            ));
        }
        let vcpus = *ds.vcpus.get_ref();
        if vcpus == 0 || vcpus > 128 {
            return Err(cx.err_or(
                ds.vcpus.span(),
                whole.clone(),
                f("vcpus"),
                "must be 1..=128",
            ));
        }
        let mem = *ds.memory_pages.get_ref();
        if mem == 0 || mem > 1 << 20 {
            return Err(cx.err_or(
                ds.memory_pages.span(),
                whole.clone(),
                f("memory_pages"),
                "must be 1..=1048576",
            ));
        }
        let host_pages = *ds.host_pages.get_ref();
        if !(1024..=1 << 26).contains(&host_pages) {
            return Err(cx.err_or(
                ds.host_pages.span(),
                whole.clone(),
                f("host_pages"),
                "must be 1024..=67108864",
            ));
        }
        let instance_names: Vec<String> = if count == 1 {
            vec![name.clone()]
        } else {
            (0..count).map(|i| format!("{name}{i}")).collect()
        };
        first_of_spec.push(domains.len());
        let mut idxs = Vec::new();
        for iname in instance_names {
            if names.contains_key(&iname) {
                return Err(cx.err(
                    ds.name.span(),
                    f("name"),
                    format!("a domain or group named {iname:?} already exists"),
                ));
            }
            let mut cfg = DomainConfig::new(iname.clone())
                .vcpus(vcpus)
                .kind(match ds.kind {
                    KindSpec::Pv => DomainKind::Pv,
                    KindSpec::Hvm => DomainKind::Hvm,
                })
                .memory_pages(mem)
                .max_maptrack_frames(ds.max_maptrack_frames)
                .privileged(ds.privileged)
                .host_pages(host_pages)
                .iommu(match ds.iommu {
                    IommuSpec::Off => IommuMode::Off,
                    IommuSpec::Strict => IommuMode::Strict,
                })
                .map_limit(match ds.map_limit {
                    MapLimitSpec::Limit(n) => MapLimit::Limit(n),
                    MapLimitSpec::Word(MapLimitWord::Default) => MapLimit::Default,
                    MapLimitSpec::Word(MapLimitWord::Off) => MapLimit::Off,
                });
            if let Some(m) = &ds.max_grant_frames {
                if *m.get_ref() == 0 {
                    return Err(cx.err(m.span(), f("max_grant_frames"), "must be at least 1"));
                }
                cfg = cfg.max_grant_frames(*m.get_ref());
            }
            let pi = domains.len();
            idxs.push(pi);
            names.insert(
                iname.clone(),
                if ds.spawn {
                    Named::One(pi)
                } else {
                    Named::Template(pi)
                },
            );
            domains.push(DomainPlan {
                name: iname,
                config: cfg,
                grant_frames: 1,
                grants: Vec::new(),
                spawn: ds.spawn,
                adversarial: false,
            });
            spec_of.push(si);
        }
        if count > 1 {
            if names.contains_key(&name) {
                return Err(cx.err(
                    ds.name.span(),
                    f("name"),
                    format!("a domain named {name:?} already exists"),
                ));
            }
            names.insert(name, Named::Group(idxs));
        }
    }
    let lookup = |s: &Spanned<String>, field: String| -> Result<Named, ScenarioError> {
        names.get(s.get_ref().trim()).cloned().ok_or_else(|| {
            let known: Vec<&str> = names.keys().map(String::as_str).collect();
            cx.err(
                s.span(),
                field,
                format!(
                    "unknown domain {:?} (known: {})",
                    s.get_ref(),
                    known.join(", ")
                ),
            )
        })
    };
    let one = |s: &Spanned<String>, field: String, what: &str| -> Result<usize, ScenarioError> {
        match lookup(s, field.clone())? {
            Named::One(i) => Ok(i),
            Named::Group(_) => Err(cx.err(s.span(), field, format!("{:?} is a group; {what} needs one domain", s.get_ref()))),
            Named::Template(_) => Err(cx.err(
                s.span(),
                field,
                format!("{:?} is a churn template (spawn = false); {what} needs a domain created at start", s.get_ref()),
            )),
        }
    };

    // Grants.
    for pi in 0..domains.len() {
        let si = spec_of[pi];
        let ds = spec.domain[si].get_ref();
        let mut blocks = Vec::new();
        for (gi, gs) in ds.grant.iter().enumerate() {
            let whole = gs.span();
            let gs = gs.get_ref();
            let f = |k: &str| format!("domain[{si}].grant[{gi}].{k}");
            let to = one(&gs.to, f("to"), "a grant")?;
            if to == pi {
                return Err(cx.err(
                    gs.to.span(),
                    f("to"),
                    "a domain does not grant to itself here",
                ));
            }
            let [first, end] = *gs.refs.get_ref();
            if first >= end {
                return Err(cx.err_or(
                    gs.refs.span(),
                    whole,
                    f("refs"),
                    "needs [first, end) with first < end",
                ));
            }
            let cap = domains[pi]
                .config
                .max_grant_frames
                .saturating_mul(SHGNT_PER_PAGE_V1);
            if end > cap {
                return Err(cx.err(
                    gs.refs.span(),
                    f("refs"),
                    format!(
                        "ref {} is beyond max_grant_frames ({} frames = {cap} refs)",
                        end - 1,
                        domains[pi].config.max_grant_frames
                    ),
                ));
            }
            let overlap = blocks
                .iter()
                .any(|b: &GrantBlock| first < b.end && b.first < end);
            if overlap {
                return Err(cx.err(
                    gs.refs.span(),
                    f("refs"),
                    "overlaps another grant block of this domain",
                ));
            }
            blocks.push(GrantBlock {
                to,
                first,
                end,
                readonly_every: gs.readonly_every,
            });
        }
        let needed = blocks
            .iter()
            .map(|b| b.end)
            .max()
            .unwrap_or(0)
            .div_ceil(SHGNT_PER_PAGE_V1)
            .max(1);
        let frames = match &ds.grant_frames {
            Some(g) => {
                let g_v = *g.get_ref();
                if g_v < needed || g_v > domains[pi].config.max_grant_frames {
                    return Err(cx.err(
                        g.span(),
                        format!("domain[{si}].grant_frames"),
                        format!(
                            "must be {needed}..={} (the grant blocks need {needed})",
                            domains[pi].config.max_grant_frames
                        ),
                    ));
                }
                g_v
            }
            None => needed,
        };
        domains[pi].grants = blocks;
        domains[pi].grant_frames = frames;
    }

    // Churn.
    let mut churn = Vec::new();
    let mut churn_of_template: BTreeMap<usize, usize> = BTreeMap::new();
    for (ci, cs) in spec.churn.iter().enumerate() {
        let whole = cs.span();
        let cs = cs.get_ref();
        let f = |k: &str| format!("churn[{ci}].{k}");
        let t = match lookup(&cs.template, f("template"))? {
            Named::Template(t) => t,
            _ => {
                return Err(cx.err(
                    cs.template.span(),
                    f("template"),
                    format!(
                        "{:?} must be a [[domain]] with spawn = false",
                        cs.template.get_ref()
                    ),
                ))
            }
        };
        if churn_of_template.insert(t, ci).is_some() {
            return Err(cx.err(
                cs.template.span(),
                f("template"),
                "this template already has a [[churn]] entry",
            ));
        }
        let live = *cs.live.get_ref();
        if live == 0 || live > 1000 {
            return Err(cx.err_or(cs.live.span(), whole.clone(), f("live"), "must be 1..=1000"));
        }
        let life = *cs.lifetime_ms.get_ref();
        if life == 0 {
            return Err(cx.err_or(
                cs.lifetime_ms.span(),
                whole,
                f("lifetime_ms"),
                "must be at least 1",
            ));
        }
        churn.push(ChurnPlan {
            template: t,
            live,
            lifetime_ms: life,
        });
    }
    for (pi, d) in domains.iter().enumerate() {
        if !d.spawn && !churn_of_template.contains_key(&pi) {
            let ds = &spec.domain[spec_of[pi]];
            return Err(cx.err(
                ds.get_ref().name.span(),
                format!("domain[{}].spawn", spec_of[pi]),
                format!(
                    "{:?} has spawn = false but no [[churn]] entry uses it",
                    d.name
                ),
            ));
        }
    }

    // Threads.
    let mut used_vcpus: BTreeMap<(usize, u16), String> = BTreeMap::new();
    let mut guest_side: BTreeMap<usize, usize> = BTreeMap::new();
    let mut threads = Vec::new();
    let mut windows: BTreeMap<usize, u64> = BTreeMap::new(); // next free host page per domain
    for (ti, ts) in spec.thread.iter().enumerate() {
        let whole = ts.span();
        let ts = ts.get_ref();
        let f = |k: &str| format!("thread[{ti}].{k}");
        let mix = ts.mix.get_ref();
        let weights = [
            (mix.map, OpKind::Map),
            (mix.unmap, OpKind::Unmap),
            (mix.request, OpKind::Request),
            (mix.copy, OpKind::Copy),
            (mix.query, OpKind::Query),
            (mix.grant, OpKind::Grant),
            (mix.end_access, OpKind::EndAccess),
            (mix.regrant, OpKind::Regrant),
            (mix.flip, OpKind::Flip),
            (mix.forge, OpKind::Forge),
        ];
        if weights.iter().any(|(w, _)| !(w.is_finite() && *w >= 0.0)) {
            return Err(cx.err(ts.mix.span(), f("mix"), "weights must be finite and >= 0"));
        }
        let total: f64 = weights.iter().map(|(w, _)| w).sum();
        if total <= 0.0 {
            return Err(cx.err(ts.mix.span(), f("mix"), "give at least one operation a positive weight (map, unmap, request, copy, query, grant, end_access, regrant, flip, forge)"));
        }
        let mut cum = Vec::new();
        let mut acc = 0.0;
        for (w, k) in weights {
            if w > 0.0 {
                acc += w / total;
                cum.push((acc, k));
            }
        }
        if let Some(last) = cum.last_mut() {
            last.0 = 1.0;
        }
        let kinds: BTreeSet<OpKind> = cum.iter().map(|(_, k)| *k).collect();
        let hyper = kinds.iter().any(|k| k.hypercall());
        let doms: Vec<usize> = match lookup(&ts.domain, f("domain"))? {
            Named::One(i) => vec![i],
            Named::Group(v) if !hyper => v,
            Named::Group(_) => {
                return Err(cx.err(
                    ts.domain.span(),
                    f("domain"),
                    format!("{:?} is a group: only guest-side mixes (grant, end_access, regrant, flip) may act for a group; hypercalls need one domain", ts.domain.get_ref()),
                ))
            }
            Named::Template(_) => {
                return Err(cx.err(ts.domain.span(), f("domain"), "threads cannot run in churn instances (a template)"))
            }
        };
        let vcpu = *ts.vcpu.get_ref();
        if hyper {
            let d = doms[0];
            if vcpu >= domains[d].config.vcpus {
                return Err(cx.err_or(
                    ts.vcpu.span(),
                    whole.clone(),
                    f("vcpu"),
                    format!(
                        "{:?} has {} vCPU(s): vcpu must be below that",
                        domains[d].name, domains[d].config.vcpus
                    ),
                ));
            }
            if let Some(prev) = used_vcpus.insert((d, vcpu), format!("thread[{ti}]")) {
                return Err(cx.err_or(
                    ts.vcpu.span(),
                    whole.clone(),
                    f("vcpu"),
                    format!(
                        "vCPU {vcpu} of {:?} is already driven by {prev}; one thread per vCPU",
                        domains[d].name
                    ),
                ));
            }
        }
        let guest_ops = kinds.iter().any(|k| !k.hypercall());
        if guest_ops {
            for &d in &doms {
                if let Some(prev) = guest_side.insert(d, ti) {
                    return Err(cx.err(
                        ts.domain.span(),
                        f("domain"),
                        format!("the guest side of {:?} is already driven by thread[{prev}]; one guest-side thread per domain", domains[d].name),
                    ));
                }
                if domains[d].grants.is_empty() {
                    return Err(cx.err(
                        ts.mix.span(),
                        f("mix"),
                        format!(
                            "guest-side operations need grants: {:?} has no [[domain.grant]] block",
                            domains[d].name
                        ),
                    ));
                }
            }
        }
        if kinds.contains(&OpKind::Flip) {
            for &d in &doms {
                domains[d].adversarial = true;
            }
        }
        let batch = *ts.batch.get_ref();
        if batch == 0 || batch > 4096 {
            return Err(cx.err_or(
                ts.batch.span(),
                whole.clone(),
                f("batch"),
                "must be 1..=4096",
            ));
        }
        // Granters.
        let mut granters = Vec::new();
        for (gi, g) in ts.granters.iter().enumerate() {
            match lookup(g, format!("thread[{ti}].granters[{gi}]"))? {
                Named::One(i) => granters.push(Source::Domain(i)),
                Named::Group(v) => granters.extend(v.into_iter().map(Source::Domain)),
                Named::Template(t) => granters.push(Source::Churn(churn_of_template[&t])),
            }
        }
        granters.sort();
        granters.dedup();
        let needs_granters = kinds.iter().any(|k| k.needs_granters());
        if needs_granters && granters.is_empty() {
            return Err(cx.err(
                whole.clone(),
                f("granters"),
                "map, request, copy and forge need `granters` (domain or group names)",
            ));
        }
        if !needs_granters && !ts.granters.is_empty() {
            return Err(cx.err(
                ts.granters[0].span(),
                f("granters"),
                "no operation of this mix uses granters",
            ));
        }
        let me = doms[0];
        if hyper && granters.contains(&Source::Domain(me)) {
            return Err(cx.err(
                ts.granters[0].span(),
                f("granters"),
                "a domain does not map its own grants here; name other domains",
            ));
        }
        if kinds.contains(&OpKind::Forge)
            && kinds
                .iter()
                .any(|k| matches!(k, OpKind::Map | OpKind::Request | OpKind::Unmap))
        {
            return Err(cx.err(
                ts.mix.span(),
                f("mix"),
                "a forging thread does not map (its forged ops must all fail)",
            ));
        }
        // Ref range.
        let template_of = |s: &Source| match s {
            Source::Domain(i) => *i,
            Source::Churn(c) => churn[*c].template,
        };
        let refs = match &ts.refs.range {
            Some(r) => {
                let [a, b] = *r.get_ref();
                if a >= b {
                    return Err(cx.err(
                        r.span(),
                        f("refs.range"),
                        "needs [first, end) with first < end",
                    ));
                }
                (a, b)
            }
            None if needs_granters => {
                let mut lo = u32::MAX;
                let mut hi = 0;
                for s in &granters {
                    for b in domains[template_of(s)].grants.iter().filter(|b| b.to == me) {
                        lo = lo.min(b.first);
                        hi = hi.max(b.end);
                    }
                }
                if lo >= hi {
                    return Err(cx.err(
                        whole.clone(),
                        f("refs.range"),
                        format!("none of the granters grants anything to {:?}; add [[domain.grant]] blocks or set refs.range", domains[me].name),
                    ));
                }
                (lo, hi)
            }
            None => (0, 1),
        };
        let share = |s: &Option<Spanned<[f64; 2]>>, k: &str| -> Result<(f64, f64), ScenarioError> {
            match s {
                None => Ok((0.0, 0.0)),
                Some(v) => {
                    let [a, b] = *v.get_ref();
                    if !(0.0..=1.0).contains(&a) || !(0.0..=1.0).contains(&b) {
                        return Err(cx.err(v.span(), f(k), "both shares must be in 0..=1"));
                    }
                    Ok((a, b))
                }
            }
        };
        let hot = share(&ts.refs.hot, "refs.hot")?;
        let warm = share(&ts.refs.warm, "refs.warm")?;
        if hot.0 + warm.0 > 1.0 + 1e-9 || hot.1 + warm.1 > 1.0 + 1e-9 {
            let sp = ts
                .refs
                .warm
                .as_ref()
                .or(ts.refs.hot.as_ref())
                .map_or(whole.clone(), |s| s.span());
            return Err(cx.err(sp, f("refs"), "hot + warm shares must not exceed 1"));
        }
        let flags = ts.flags.get_ref();
        let host = flags.contains(&FlagSpec::Host);
        let device = flags.contains(&FlagSpec::Device);
        if !host && !device {
            return Err(cx.err_or(
                ts.flags.span(),
                whole.clone(),
                f("flags"),
                "give \"host\", \"device\" or both",
            ));
        }
        if domains[me].config.kind == DomainKind::Hvm && device && hyper {
            return Err(cx.err_or(
                ts.flags.span(),
                whole.clone(),
                f("flags"),
                "an HVM mapper cannot ask for device maps (Xen refuses them)",
            ));
        }
        let max_held = *ts.max_held.get_ref();
        if max_held < batch && (kinds.contains(&OpKind::Map) || ts.persistent) {
            return Err(cx.err_or(
                ts.max_held.span(),
                whole.clone(),
                f("max_held"),
                format!("must be at least the batch ({batch})"),
            ));
        }
        let touch = *ts.touch.get_ref();
        if usize::from(touch) > crate::abi::PAGE_SIZE {
            return Err(cx.err(ts.touch.span(), f("touch"), "at most 4096 bytes"));
        }
        if ts.copy.min == 0
            || ts.copy.min > ts.copy.max
            || usize::from(ts.copy.max) > crate::abi::PAGE_SIZE
        {
            return Err(cx.err(whole.clone(), f("copy"), "needs 1 <= min <= max <= 4096"));
        }
        let query = match ts.query.get_ref().trim() {
            "self" => None,
            _ => Some(one(&ts.query, f("query"), "query")?),
        };
        if let Some(q) = query {
            if q != me && !domains[me].config.privileged {
                return Err(cx.err(
                    ts.query.span(),
                    f("query"),
                    format!(
                        "{:?} may only query itself unless it is privileged",
                        domains[me].name
                    ),
                ));
            }
        }
        // Host address window: held mappings, two batches in flight, one page for forging.
        let window_pages = u64::from(max_held) + 2 * u64::from(batch) + 2;
        let next = windows.entry(me).or_insert(16);
        let window_base = *next;
        if hyper {
            *next += window_pages;
            if *next > domains[me].config.host_pages {
                return Err(cx.err(
                    whole.clone(),
                    f("max_held"),
                    format!(
                        "the threads of {:?} need {} host pages for their mappings; raise its host_pages",
                        domains[me].name, *next
                    ),
                ));
            }
        }
        threads.push(ThreadPlan {
            index: ti,
            domains: doms,
            vcpu,
            mix: cum,
            batch,
            ops: ts.ops,
            granters,
            refs,
            hot,
            warm,
            host,
            device,
            readonly: ts.readonly,
            persistent: ts.persistent,
            max_held,
            touch,
            copy: ts.copy.clone(),
            query,
            yield_each: ts.yield_each,
            window_base,
            window_pages,
        });
    }
    if threads.is_empty() {
        return Err(cx.err(0..0, "thread", "a scenario needs at least one [[thread]]"));
    }
    // Each hypercall thread holds one of the machine's pCPU slots for the whole run; teardown
    // steps, events, churn and the drain need free ones.
    let pcpus = crate::hypervisor::HypervisorConfig::default().pcpus;
    let hyper_threads: Vec<&ThreadPlan> = threads.iter().filter(|t| t.needs_vcpu()).collect();
    if hyper_threads.len() + 4 > pcpus {
        let t = hyper_threads[pcpus - 4];
        return Err(cx.err(
            spec.thread[t.index].span(),
            format!("thread[{}]", t.index),
            format!(
                "at most {} threads may issue hypercalls (the simulated machine has {pcpus} pCPU slots; 4 stay free for teardown, events and churn)",
                pcpus - 4
            ),
        ));
    }
    // A forging domain must not map anywhere.
    for t in &threads {
        if t.has(OpKind::Forge) {
            let d = t.domains[0];
            if threads
                .iter()
                .any(|u| u.domains[0] == d && (u.has(OpKind::Map) || u.has(OpKind::Request)))
            {
                let ts = &spec.thread[t.index];
                return Err(cx.err(
                    ts.span(),
                    format!("thread[{}].domain", t.index),
                    format!("{:?} forges handles, so no thread of it may map (forged ops must all fail)", domains[d].name),
                ));
            }
        }
    }

    // Events.
    let mut events = Vec::new();
    for (ei, es) in spec.event.iter().enumerate() {
        let whole = es.span();
        let es = es.get_ref();
        let f = |k: &str| format!("event[{ei}].{k}");
        let at = match es.at.get_ref() {
            AtSpec::Seconds(s) if s.is_finite() && *s >= 0.0 => When::Seconds(*s),
            AtSpec::Percent(p) => {
                let v = p
                    .trim()
                    .strip_suffix('%')
                    .and_then(|n| n.trim().parse::<f64>().ok())
                    .filter(|v| (0.0..=100.0).contains(v));
                match v {
                    Some(v) => When::Fraction(v / 100.0),
                    None => {
                        return Err(cx.err(
                            es.at.span(),
                            f("at"),
                            "give seconds (a number) or a percentage like \"40%\"",
                        ))
                    }
                }
            }
            AtSpec::Seconds(_) => {
                return Err(cx.err(es.at.span(), f("at"), "must be >= 0 seconds"))
            }
        };
        let dom = one(&es.domain, f("domain"), "an event")?;
        let mut by = None;
        let mut frames = 0;
        match es.kind {
            EventKind::Destroy => {
                if events
                    .iter()
                    .any(|e: &EventPlan| e.kind == EventKind::Destroy && e.domain == dom)
                {
                    return Err(cx.err(
                        es.domain.span(),
                        f("domain"),
                        "this domain is already destroyed by an earlier event",
                    ));
                }
            }
            EventKind::Flip => {
                if domains[dom].grants.is_empty() {
                    return Err(cx.err(es.domain.span(), f("domain"), "flip rewrites the domain's granted entries: it has no [[domain.grant]] block"));
                }
                domains[dom].adversarial = true;
            }
            EventKind::Grow | EventKind::Forge => {
                let issuer = match &es.by {
                    Some(b) => one(b, f("by"), "the issuer")?,
                    None if es.kind == EventKind::Grow => dom,
                    None => {
                        return Err(cx.err(
                            whole.clone(),
                            f("by"),
                            "forge needs `by`: the domain whose vCPU forges",
                        ))
                    }
                };
                let v = match &es.vcpu {
                    Some(v) => *v.get_ref(),
                    None => domains[issuer].config.vcpus - 1,
                };
                let vspan = es.vcpu.as_ref().map_or(whole.clone(), |v| v.span());
                if v >= domains[issuer].config.vcpus {
                    return Err(cx.err(
                        vspan,
                        f("vcpu"),
                        format!(
                            "{:?} has {} vCPU(s)",
                            domains[issuer].name, domains[issuer].config.vcpus
                        ),
                    ));
                }
                if let Some(t) = used_vcpus.get(&(issuer, v)) {
                    if t.starts_with("thread") {
                        return Err(cx.err(
                            vspan,
                            f("vcpu"),
                            format!("vCPU {v} of {:?} is driven by {t} for the whole run; pick another vcpu (or `by`)", domains[issuer].name),
                        ));
                    }
                }
                if es.kind == EventKind::Grow {
                    if issuer != dom && !domains[issuer].config.privileged {
                        return Err(cx.err(
                            es.by.as_ref().map_or(whole.clone(), |b| b.span()),
                            f("by"),
                            "growing another domain's table needs a privileged issuer",
                        ));
                    }
                    let fr = es
                        .frames
                        .as_ref()
                        .ok_or_else(|| cx.err(whole.clone(), f("frames"), "grow needs `frames`"))?;
                    frames = *fr.get_ref();
                    if frames == 0 || frames > domains[dom].config.max_grant_frames {
                        return Err(cx.err(
                            fr.span(),
                            f("frames"),
                            format!(
                                "must be 1..={} (max_grant_frames)",
                                domains[dom].config.max_grant_frames
                            ),
                        ));
                    }
                } else if threads.iter().any(|t| {
                    t.domains[0] == issuer && (t.has(OpKind::Map) || t.has(OpKind::Request))
                }) {
                    return Err(cx.err(
                        es.by.as_ref().map_or(whole.clone(), |b| b.span()),
                        f("by"),
                        "the forging domain must not map (its forged ops must all fail)",
                    ));
                }
                by = Some((issuer, v));
            }
        }
        events.push(EventPlan {
            index: ei,
            at,
            kind: es.kind,
            domain: dom,
            by,
            step_gap_us: es.step_gap_us,
            frames,
            count: es.count,
        });
    }
    Ok(Plan {
        domains,
        threads,
        events,
        churn,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths() {
        let src = "a = 1\n[[domain]]\nname = \"x\"\n[[domain]]\nname = 3\n[[domain.grant]]\nto = 5\n[[thread]]\nmix = { map = \"x\" }\nrefs = { range = [0, \"y\"] }\n";
        let at = |needle: &str| field_path_at(src, src.find(needle).unwrap(), false);
        assert_eq!(at("3"), "domain[1].name");
        assert_eq!(at("5"), "domain[1].grant[0].to");
        assert_eq!(at("\"x\" }"), "thread[0].mix.map");
        assert_eq!(at("\"y\""), "thread[0].refs.range[1]");
        let hdr = src.find("[[thread]]").unwrap();
        assert_eq!(field_path_at(src, hdr, true), "thread[0]");
        assert_eq!(field_path_at(src, hdr, false), "domain[1].grant[0]");
    }
}
