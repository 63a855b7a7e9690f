//! No import cycle among the aggregator's modules (issue #13): the modules are layered, low ones
//! (settings, metrics, store, data) never reaching up to high ones (HTTP routing, connection
//! tasks, the server), so each can be read, tested and changed from the bottom up.
//!
//! Reads `src/**/*.rs`, takes every `crate::<module>` reference of each top-level module
//! (`src/x.rs` and `src/x/**` are module `x`; `use crate::{a, b::c}` groups count each item;
//! comments count too: an intra-doc link is a reference), and fails naming a cycle if the graph
//! has one. `crate::Name` for an item of the crate root counts as a reference to `lib`. Run it
//! with `cargo test -p aggregator --test module_graph -- --nocapture` to see the graph.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

type Graph = BTreeMap<String, BTreeSet<String>>;

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The top-level module a file of `src` belongs to.
fn module_of(src: &Path, file: &Path) -> String {
    let rel = file.strip_prefix(src).unwrap();
    let first = rel.components().next().unwrap().as_os_str().to_string_lossy().into_owned();
    first.strip_suffix(".rs").unwrap_or(&first).to_owned()
}

fn is_ident(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_'
}

fn ident_at(s: &str) -> &str {
    let end = s.find(|c: char| !is_ident(c)).unwrap_or(s.len());
    &s[..end]
}

/// The first path segment of every item of the `{...}` group `s` starts with.
fn group_heads(s: &str) -> Vec<String> {
    let mut heads = Vec::new();
    let mut depth = 0usize;
    let mut item_start = true;
    for (i, c) in s.char_indices() {
        match c {
            '{' => {
                depth += 1;
                if depth == 1 {
                    item_start = true;
                    continue;
                }
            }
            '}' => {
                depth -= 1;
                if depth == 0 {
                    break;
                }
            }
            ',' if depth == 1 => {
                item_start = true;
                continue;
            }
            _ => {}
        }
        if depth == 1 && item_start && !c.is_whitespace() {
            item_start = false;
            let head = ident_at(&s[i..]);
            if !head.is_empty() {
                heads.push(head.to_owned());
            }
        }
    }
    heads
}

/// The first segments after every `crate::` in `text` (not `$crate::` or `foo_crate::`).
fn crate_references(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    for (at, _) in text.match_indices("crate::") {
        let before = text[..at].chars().next_back();
        if before.is_some_and(|c| is_ident(c) || c == '$') {
            continue;
        }
        let rest = text[at + "crate::".len()..].trim_start();
        if rest.starts_with('{') {
            out.extend(group_heads(rest));
        } else {
            let head = ident_at(rest);
            if !head.is_empty() {
                out.push(head.to_owned());
            }
        }
    }
    out
}

/// The graph of `src`: each top-level module and the modules it refers to (itself left out).
fn module_graph(src: &Path) -> Graph {
    let mut files = Vec::new();
    rust_files(src, &mut files);
    let modules: BTreeSet<String> = files.iter().map(|f| module_of(src, f)).collect();
    let mut graph = Graph::new();
    for file in &files {
        let module = module_of(src, file);
        let text = std::fs::read_to_string(file).unwrap();
        let deps = graph.entry(module.clone()).or_default();
        for head in crate_references(&text) {
            let target = if modules.contains(&head) { head } else { "lib".to_owned() };
            if target != module {
                deps.insert(target);
            }
        }
    }
    graph
}

/// Tarjan's strongly connected components with more than one module: each holds a cycle.
fn cycles(graph: &Graph) -> Vec<Vec<String>> {
    struct Tarjan<'g> {
        graph: &'g Graph,
        index: BTreeMap<&'g str, usize>,
        low: BTreeMap<&'g str, usize>,
        stack: Vec<&'g str>,
        on_stack: BTreeSet<&'g str>,
        found: Vec<Vec<String>>,
    }
    impl<'g> Tarjan<'g> {
        fn visit(&mut self, v: &'g str) {
            let i = self.index.len();
            self.index.insert(v, i);
            self.low.insert(v, i);
            self.stack.push(v);
            self.on_stack.insert(v);
            for w in self.graph.get(v).into_iter().flatten() {
                let w = w.as_str();
                if !self.index.contains_key(w) {
                    self.visit(w);
                    let low = self.low[v].min(self.low[w]);
                    self.low.insert(v, low);
                } else if self.on_stack.contains(w) {
                    let low = self.low[v].min(self.index[w]);
                    self.low.insert(v, low);
                }
            }
            if self.low[v] == self.index[v] {
                let mut component = Vec::new();
                loop {
                    let w = self.stack.pop().unwrap();
                    self.on_stack.remove(w);
                    component.push(w.to_owned());
                    if w == v {
                        break;
                    }
                }
                if component.len() > 1 {
                    component.sort();
                    self.found.push(component);
                }
            }
        }
    }
    let mut t = Tarjan {
        graph,
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: Vec::new(),
        on_stack: BTreeSet::new(),
        found: Vec::new(),
    };
    for v in graph.keys() {
        if !t.index.contains_key(v.as_str()) {
            t.visit(v);
        }
    }
    t.found
}

/// One cycle through `component`'s first module, as `a -> b -> ... -> a` (a shortest one, by
/// breadth-first search inside the component).
fn a_cycle(graph: &Graph, component: &[String]) -> String {
    let inside: BTreeSet<&str> = component.iter().map(String::as_str).collect();
    let start = component[0].as_str();
    let mut came_from: BTreeMap<&str, &str> = BTreeMap::new();
    let mut queue = std::collections::VecDeque::from([start]);
    while let Some(v) = queue.pop_front() {
        for w in graph.get(v).into_iter().flatten().map(String::as_str) {
            if !inside.contains(w) {
                continue;
            }
            if w == start {
                let mut path = vec![v];
                let mut at = v;
                while at != start {
                    at = came_from[at];
                    path.push(at);
                }
                path.reverse();
                path.push(start);
                return path.join(" -> ");
            }
            if !came_from.contains_key(w) {
                came_from.insert(w, v);
                queue.push_back(w);
            }
        }
    }
    component.join(", ")
}

fn show(graph: &Graph) -> String {
    graph
        .iter()
        .map(|(m, deps)| format!("  {m} -> {}\n", deps.iter().cloned().collect::<Vec<_>>().join(", ")))
        .collect()
}

#[test]
fn references_are_parsed_with_groups_and_nesting() {
    let text = "use crate::{a, b::{c, d}, e::F};\nuse crate::g::H;\n//! [`crate::i`]\n$crate::j; my_crate::k";
    assert_eq!(crate_references(text), ["a", "b", "e", "g", "i"]);
    let mut graph = Graph::new();
    graph.insert("a".into(), BTreeSet::from(["b".into()]));
    graph.insert("b".into(), BTreeSet::from(["c".into()]));
    graph.insert("c".into(), BTreeSet::from(["a".into(), "d".into()]));
    graph.insert("d".into(), BTreeSet::new());
    let found = cycles(&graph);
    assert_eq!(found, [vec!["a".to_owned(), "b".into(), "c".into()]]);
    assert_eq!(a_cycle(&graph, &found[0]), "a -> b -> c -> a");
}

#[test]
fn the_aggregators_modules_have_no_import_cycle() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let graph = module_graph(&src);
    println!("module graph of aggregator/src:\n{}", show(&graph));
    assert!(graph.len() > 10 && graph.contains_key("state"), "{graph:?}");
    let found = cycles(&graph);
    let named: Vec<String> =
        found.iter().map(|c| format!("{{{}}}: e.g. {}", c.join(", "), a_cycle(&graph, c))).collect();
    assert!(found.is_empty(), "import cycles among the aggregator's modules:\n  {}", named.join("\n  "));
}
