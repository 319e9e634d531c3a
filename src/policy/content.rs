//! Content rules: the prohibited categories of the policy (`[[content.category]]`) and the
//! check that finds them in a submitted message (the anti-spam policy's prohibited content).
//!
//! A category has a name and three kinds of rule: `phrases` (literal, case-insensitive,
//! matched on word boundaries), `patterns` (regular expressions, case-insensitive) and
//! `link_domains` (a link whose host is the domain or a subdomain of it). They are looked
//! for in the Subject and in every text and HTML body, decoded (quoted-printable, base64,
//! charsets). HTML is reduced to its visible text for phrases and patterns; its `href`s
//! count as links, as do `http://`, `https://` and `www.` URLs written in any text.
//!
//! Text is normalised before matching, so a rule written once catches the common
//! disguises: lower case, every run of white space (line breaks of wrapped text, `&nbsp;`)
//! one space, invisible characters (soft hyphens, zero-width spaces) removed. Patterns see
//! the same normalised text.
//!
//! Speed: the policy builds one Aho-Corasick automaton over every phrase of every category
//! and one `RegexSet` over every pattern when it is loaded; a message costs one parse
//! (mail-parser), one pass of the automaton and of the set over each text (plus the exact
//! regex of a pattern the set reports, see [`Patterns`]), and a hash look-up per link
//! host. A policy without categories does not even parse the message.
//!
//! Loading never fails half-way: a bad regex, an empty category or a bad domain is a policy
//! problem naming the category, and the policy is refused as a whole. Checking never
//! panics, whatever the message.

use std::collections::{HashMap, HashSet};
use std::fmt;

use aho_corasick::{AhoCorasick, MatchKind};
use mail_parser::{MessageParser, PartType};
use regex::{Regex, RegexBuilder, RegexSet, RegexSetBuilder};

use crate::config::reader::Section;

/// The compiled content rules of one policy.
#[derive(Clone, Default)]
pub struct Content {
    /// Category names in policy order; every category index below points here.
    names: Vec<String>,
    /// `[content] freeze_account`: a match also freezes the sending account.
    freeze: bool,
    /// Every phrase of every category; `None` when no category has one.
    phrases: Option<Phrases>,
    /// Every pattern of every category; `None` when no category has one.
    patterns: Option<Patterns>,
    /// Link domain (lower-case A-label) → category index.
    link_domains: HashMap<String, usize>,
}

/// One automaton for all phrases; pattern id `i` of the automaton is `rules[i]`.
#[derive(Clone)]
struct Phrases {
    automaton: AhoCorasick,
    rules: Vec<PhraseRule>,
}

#[derive(Clone)]
struct PhraseRule {
    category: usize,
    /// The phrase as normalised (for logs).
    text: String,
    /// The phrase starts (ends) with a word character, so the text must not have one
    /// right before (after) it: "cialis" is not found in "specialist".
    bound_start: bool,
    bound_end: bool,
}

/// All patterns: one set finds the candidates, each pattern's own regex confirms them.
///
/// Why two: the regex crate's fast engines (its DFAs) cannot evaluate a Unicode word
/// boundary (`\b`) once the text has a non-ASCII character — a `€` or an `é` in any
/// European newsletter — and a set then falls back to its slowest engine (6 ms for
/// 10 KiB of the example rules, against 25 µs). So the set is built from the patterns
/// with their word-boundary assertions removed, which can only make them match more
/// often and keeps the DFAs; the few patterns it reports are then confirmed with the
/// exact pattern, whose literal prefilter keeps that cheap.
#[derive(Clone)]
struct Patterns {
    /// Pattern `i` without word boundaries (or as written, when that does not compile).
    candidates: RegexSet,
    /// Pattern `i` as written (case-insensitive).
    exact: Vec<Regex>,
    categories: Vec<usize>,
    sources: Vec<String>,
}

/// A message matched a prohibited category.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Match {
    /// The category's name, as the reply states it.
    pub category: String,
    /// What matched, for the operator's log: `phrase "…"`, `pattern "…"` or
    /// `link domain "…"` (the policy's words, never the message's).
    pub rule: String,
    /// `[content] freeze_account`: the account is to be frozen too.
    pub freeze: bool,
}

impl fmt::Debug for Content {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Content")
            .field("categories", &self.names)
            .field("freeze", &self.freeze)
            .field(
                "phrases",
                &self.phrases.as_ref().map_or(0, |p| p.rules.len()),
            )
            .field(
                "patterns",
                &self.patterns.as_ref().map_or(0, |p| p.sources.len()),
            )
            .field("link_domains", &self.link_domains.len())
            .finish()
    }
}

impl Content {
    /// No category: every message passes (the embedded default policy).
    pub fn is_empty(&self) -> bool {
        self.names.is_empty()
    }

    /// The category names, in policy order.
    pub fn categories(&self) -> &[String] {
        &self.names
    }

    /// `[content] freeze_account`: whether a match also freezes the account.
    pub fn freeze_account(&self) -> bool {
        self.freeze
    }

    /// The first prohibited category found in a raw message (headers and body as
    /// submitted), or `None` when it is clean. The Subject is searched first, then each
    /// text and HTML body in order; within one text phrases come before patterns, and
    /// patterns before links.
    pub fn check(&self, raw_message: &[u8]) -> Option<Match> {
        if self.is_empty() {
            return None;
        }
        let mut scratch = String::new();
        let Some(message) = MessageParser::default().parse(raw_message) else {
            // Nothing mail-parser can read as a message: search the bytes as text.
            return self.check_text(&String::from_utf8_lossy(raw_message), &mut scratch);
        };
        if let Some(subject) = message.subject()
            && let Some(m) = self.check_text(subject, &mut scratch)
        {
            return Some(m);
        }
        for id in body_parts(&message.text_body, &message.html_body) {
            let found = match message.parts.get(id).map(|p| &p.body) {
                Some(PartType::Text(text)) => self.check_text(text, &mut scratch),
                Some(PartType::Html(html)) => self.check_html(html, &mut scratch),
                _ => None,
            };
            if found.is_some() {
                return found;
            }
        }
        None
    }

    /// Phrases, patterns and URLs in one plain text; `scratch` holds its normalised form.
    fn check_text(&self, text: &str, scratch: &mut String) -> Option<Match> {
        normalise(text, scratch);
        self.find_phrase(scratch)
            .or_else(|| self.find_pattern(scratch))
            .or_else(|| self.find_link(text_link_hosts(scratch)))
    }

    /// An HTML body: its visible text as plain text, then the hosts of its `href`s.
    fn check_html(&self, html: &str, scratch: &mut String) -> Option<Match> {
        let visible = mail_parser::decoders::html::html_to_text(html);
        self.check_text(&visible, scratch)
            .or_else(|| self.find_link(html_link_hosts(html)))
    }

    /// The first phrase found on word boundaries in normalised `text`.
    fn find_phrase(&self, text: &str) -> Option<Match> {
        let phrases = self.phrases.as_ref()?;
        // Overlapping search: a candidate refused for its boundaries must not hide a
        // valid one that overlaps it.
        phrases
            .automaton
            .find_overlapping_iter(text)
            .find_map(|m| {
                let rule = &phrases.rules[m.pattern().as_usize()];
                let before_ok = !rule.bound_start || !text[..m.start()].ends_with(is_word);
                let after_ok = !rule.bound_end || !text[m.end()..].starts_with(is_word);
                (before_ok && after_ok).then_some(rule)
            })
            .map(|rule| self.matched(rule.category, format!("phrase {:?}", rule.text)))
    }

    /// The pattern of the first category (in policy order) that matches normalised `text`.
    fn find_pattern(&self, text: &str) -> Option<Match> {
        let patterns = self.patterns.as_ref()?;
        if !patterns.candidates.is_match(text) {
            return None;
        }
        // Patterns are stored in policy order, so the first confirmed one is the match.
        let i = patterns
            .candidates
            .matches(text)
            .into_iter()
            .find(|&i| patterns.exact[i].is_match(text))?;
        Some(self.matched(
            patterns.categories[i],
            format!("pattern {:?}", patterns.sources[i]),
        ))
    }

    /// The first host that is a link domain or a subdomain of one.
    fn find_link(&self, hosts: impl Iterator<Item = String>) -> Option<Match> {
        if self.link_domains.is_empty() {
            return None;
        }
        for host in hosts {
            for domain in parent_domains(&host) {
                if let Some(&category) = self.link_domains.get(domain) {
                    return Some(self.matched(category, format!("link domain {domain:?}")));
                }
            }
        }
        None
    }

    fn matched(&self, category: usize, rule: String) -> Match {
        Match {
            category: self.names[category].clone(),
            rule,
            freeze: self.freeze,
        }
    }
}

/// The parts worth searching: text and HTML bodies, each once (mail-parser lists a lone
/// plain-text body as the HTML body too), in message order.
fn body_parts(text: &[u32], html: &[u32]) -> Vec<usize> {
    let mut ids: Vec<usize> = text.iter().chain(html).map(|&i| i as usize).collect();
    ids.sort_unstable();
    ids.dedup();
    ids
}

/// Word characters for phrase boundaries: letters and digits of any script, and `_`.
fn is_word(c: char) -> bool {
    c.is_alphanumeric() || c == '_'
}

/// Characters that render as nothing and are used to split words apart unseen.
fn is_invisible(c: char) -> bool {
    matches!(
        c,
        '\u{00AD}' | '\u{034F}' | '\u{200B}'..='\u{200D}' | '\u{2060}' | '\u{FEFF}'
    )
}

/// Writes the matching form of `text` into `out`: lower case, white-space runs as one
/// space (none at the start), invisible characters removed. (Copying ASCII runs whole
/// was measured only 10 % faster: not worth the extra code.)
fn normalise(text: &str, out: &mut String) {
    out.clear();
    out.reserve(text.len());
    let mut after_space = true;
    for c in text.chars() {
        if c.is_whitespace() {
            if !after_space {
                out.push(' ');
                after_space = true;
            }
        } else if !is_invisible(c) {
            after_space = false;
            if c.is_ascii() {
                out.push(c.to_ascii_lowercase());
            } else {
                out.extend(c.to_lowercase());
            }
        }
    }
}

/// `host`, then each parent domain of it: `a.b.example`, `b.example`, `example`.
fn parent_domains(host: &str) -> impl Iterator<Item = &str> {
    std::iter::successors(Some(host), |h| h.split_once('.').map(|(_, rest)| rest))
        .filter(|h| !h.is_empty())
}

/// Hosts of the URLs written in normalised (lower-case) text: after `http://`,
/// `https://`, or a `www.` that starts a word.
fn text_link_hosts(text: &str) -> impl Iterator<Item = String> + '_ {
    let mut pos = 0;
    std::iter::from_fn(move || {
        while let Some(found) = text[pos..].find(['h', 'w']) {
            let at = pos + found;
            // `h` and `w` are one byte: the next search starts right after.
            pos = at + 1;
            let here = &text[at..];
            let authority = match here
                .strip_prefix("https://")
                .or_else(|| here.strip_prefix("http://"))
            {
                Some(after) => after,
                None if here.starts_with("www.") && !text[..at].ends_with(is_word) => here,
                None => continue,
            };
            if let Some(host) = url_host(authority) {
                return Some(host);
            }
        }
        None
    })
}

/// Hosts of the `href` attribute values of an HTML document (decoded form).
fn html_link_hosts(html: &str) -> impl Iterator<Item = String> + '_ {
    let bytes = html.as_bytes();
    let mut pos = 0;
    std::iter::from_fn(move || {
        while let Some(found) = memchr::memchr2(b'h', b'H', &bytes[pos..]) {
            let start = pos + found;
            pos = start + 1;
            let name = bytes.get(start..start + 4)?;
            if !name.eq_ignore_ascii_case(b"href") {
                continue;
            }
            if let Some(value) = attribute_value(html, start + 4)
                && let Some(host) = link_host(&value)
            {
                return Some(host);
            }
        }
        None
    })
}

/// The value of an attribute whose name ends at byte `at`: `= "v"`, `='v'` or `=v`, with
/// character references decoded. `None` when no `=` follows.
fn attribute_value(html: &str, at: usize) -> Option<String> {
    let rest = html.get(at..)?.trim_start();
    let rest = rest.strip_prefix('=')?.trim_start();
    let value = match rest.chars().next()? {
        quote @ ('"' | '\'') => rest[1..].split(quote).next()?,
        _ => rest.split(|c: char| c.is_whitespace() || c == '>').next()?,
    };
    Some(if value.contains('&') {
        mail_parser::decoders::html::html_to_text(value)
    } else {
        value.to_string()
    })
}

/// The host a link points to: the authority of `scheme://…` or `//…`, the domain of
/// `mailto:…`; `None` for relative links and anything without a domain.
fn link_host(link: &str) -> Option<String> {
    let link = link.trim();
    if let Some(rest) = strip_prefix_ignore_case(link, "mailto:") {
        let address = rest.split(['?', ',']).next()?;
        return url_host(address.rsplit_once('@')?.1);
    }
    let after = match link.find("//") {
        Some(0) => &link[2..],
        Some(i) if link[..i].strip_suffix(':').is_some_and(is_scheme) => &link[i + 2..],
        _ => return None,
    };
    url_host(after)
}

/// `scheme` as RFC 3986 spells one: a letter, then letters, digits, `+`, `-`, `.`.
fn is_scheme(scheme: &str) -> bool {
    scheme.starts_with(|c: char| c.is_ascii_alphabetic())
        && scheme
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'))
}

fn strip_prefix_ignore_case<'a>(s: &'a str, prefix: &str) -> Option<&'a str> {
    let head = s.get(..prefix.len())?;
    head.eq_ignore_ascii_case(prefix)
        .then(|| &s[prefix.len()..])
}

/// The host of an authority (`user@host:port/path…`), lower case and A-label; `None`
/// when it is no domain (an IP address, a single label, garbage).
fn url_host(authority: &str) -> Option<String> {
    let end = authority
        .find(|c: char| {
            matches!(
                c,
                '/' | '?' | '#' | '\\' | '"' | '\'' | '<' | '>' | '(' | ')' | '[' | ']'
            ) || c.is_whitespace()
        })
        .unwrap_or(authority.len());
    let authority = &authority[..end];
    let host = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    let host = host.split(':').next()?;
    let host = host.trim_end_matches(['.', ',', ';', '!']);
    if !host.contains('.') {
        return None;
    }
    let host = if host.is_ascii() {
        host.to_ascii_lowercase()
    } else {
        idna::domain_to_ascii(host).ok()?
    };
    let top = host.rsplit('.').next().unwrap_or_default();
    let is_domain = host
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
        && top.bytes().any(|b| !b.is_ascii_digit());
    is_domain.then_some(host)
}

/// Reads `[content]` and its `[[content.category]]` rule sets from the policy's root
/// section, reporting each problem with its key (and the category's name).
pub(super) fn read(root: &mut Section<'_>) -> Content {
    let mut s = root.section("content");
    let freeze = s.get_or("freeze_account", false);
    let mut names: Vec<String> = Vec::new();
    let mut phrases: Vec<PhraseRule> = Vec::new();
    let mut patterns: Vec<(usize, String)> = Vec::new();
    let mut link_domains: HashMap<String, usize> = HashMap::new();
    let mut seen: HashSet<String> = HashSet::new();
    for mut c in s.array_sections("category") {
        let index = names.len();
        let name = c.get::<String>("name").unwrap_or_default();
        if name.is_empty() {
            c.problem(
                "name",
                "missing (the category's name is what the reply says)",
            );
        } else if !super::streams::valid_name(&name) {
            c.problem(
                "name",
                format!("category {name:?}: names use a-z, 0-9, - and _ only (at most 64)"),
            );
        } else if !seen.insert(name.clone()) {
            c.problem("name", format!("category {name:?} is defined twice"));
        }
        let label = if name.is_empty() { "(unnamed)" } else { &name };
        let given_phrases = c.get::<Vec<String>>("phrases").unwrap_or_default();
        let given_patterns = c.get::<Vec<String>>("patterns").unwrap_or_default();
        let given_domains = c.get::<Vec<String>>("link_domains").unwrap_or_default();
        if given_phrases.is_empty() && given_patterns.is_empty() && given_domains.is_empty() {
            c.problem(
                "",
                format!("category {label:?} is empty: give it phrases, patterns or link_domains"),
            );
        }
        for phrase in given_phrases {
            match phrase_rule(index, &phrase) {
                Some(rule) => phrases.push(rule),
                None => c.problem("phrases", format!("category {label:?}: an empty phrase")),
            }
        }
        for pattern in given_patterns {
            match check_pattern(&pattern) {
                Ok(()) => patterns.push((index, pattern)),
                Err(e) => c.problem(
                    "patterns",
                    format!("category {label:?}: pattern {pattern:?} {e}"),
                ),
            }
        }
        for domain in given_domains {
            match crate::smtp::address::canonical_domain(&domain) {
                Some(d) if d.contains('.') => {
                    if let Some(&other) = link_domains.get(&d) {
                        c.problem(
                            "link_domains",
                            format!(
                                "category {label:?}: {d:?} is already a link domain of {:?}",
                                names.get(other).map_or(label, String::as_str)
                            ),
                        );
                    }
                    link_domains.entry(d).or_insert(index);
                }
                _ => c.problem(
                    "link_domains",
                    format!(
                        "category {label:?}: {domain:?} is not a domain (like \"example.com\")"
                    ),
                ),
            }
        }
        names.push(name);
    }
    Content {
        names,
        freeze,
        phrases: build_phrases(phrases, &s),
        patterns: build_patterns(patterns, &s),
        link_domains,
    }
}

/// The rule for one phrase as written in the policy; `None` when it is blank.
fn phrase_rule(category: usize, phrase: &str) -> Option<PhraseRule> {
    let mut text = String::new();
    normalise(phrase, &mut text);
    let text = text.trim_end().to_string();
    if text.is_empty() {
        return None;
    }
    Some(PhraseRule {
        category,
        bound_start: text.starts_with(is_word),
        bound_end: text.ends_with(is_word),
        text,
    })
}

/// Whether a pattern compiles on its own, and does not match empty text (it would refuse
/// every message); the error says why not.
fn check_pattern(pattern: &str) -> Result<(), String> {
    let re = compile(pattern).map_err(|e| format!("is not a valid regex: {}", regex_error(&e)))?;
    if re.is_match("") {
        return Err("matches empty text, so it would refuse every message".into());
    }
    Ok(())
}

/// The one line of a regex error that says what is wrong.
fn regex_error(e: &regex::Error) -> String {
    let text = e.to_string();
    text.lines()
        .rev()
        .find_map(|l| l.trim().strip_prefix("error: "))
        .or_else(|| text.lines().next())
        .unwrap_or("invalid")
        .trim()
        .to_string()
}

/// The automaton over every phrase (`None` for none).
fn build_phrases(rules: Vec<PhraseRule>, s: &Section<'_>) -> Option<Phrases> {
    if rules.is_empty() {
        return None;
    }
    // Standard semantics: the only kind that reports overlapping matches.
    let built = AhoCorasick::builder()
        .match_kind(MatchKind::Standard)
        .build(rules.iter().map(|r| r.text.as_str()));
    match built {
        Ok(automaton) => Some(Phrases { automaton, rules }),
        Err(e) => {
            s.problem("category", format!("the phrases cannot be compiled: {e}"));
            None
        }
    }
}

/// The candidate set and exact regexes over every pattern that compiled (`None` for
/// none).
fn build_patterns(patterns: Vec<(usize, String)>, s: &Section<'_>) -> Option<Patterns> {
    if patterns.is_empty() {
        return None;
    }
    let (categories, sources): (Vec<usize>, Vec<String>) = patterns.into_iter().unzip();
    // Every pattern compiled on its own already (`check_pattern`).
    let exact = match sources
        .iter()
        .map(|p| compile(p))
        .collect::<Result<Vec<_>, _>>()
    {
        Ok(exact) => exact,
        Err(e) => {
            s.problem(
                "category",
                format!("a pattern cannot be compiled: {}", regex_error(&e)),
            );
            return None;
        }
    };
    let loose: Vec<String> = sources
        .iter()
        .map(|p| {
            let loose = without_word_boundaries(p);
            if compile(&loose).is_ok() {
                loose
            } else {
                p.clone()
            }
        })
        .collect();
    let built = RegexSetBuilder::new(&loose).case_insensitive(true).build();
    match built {
        Ok(candidates) => Some(Patterns {
            candidates,
            exact,
            categories,
            sources,
        }),
        Err(e) => {
            s.problem(
                "category",
                format!("the patterns together are too big: {}", regex_error(&e)),
            );
            None
        }
    }
}

/// A pattern as the policy means it: case-insensitive.
fn compile(pattern: &str) -> Result<Regex, regex::Error> {
    RegexBuilder::new(pattern).case_insensitive(true).build()
}

/// `pattern` without its word-boundary assertions (`\b`, `\B`, `\b{…}`, `\<`, `\>`)
/// outside character classes: it matches wherever `pattern` does, and more.
fn without_word_boundaries(pattern: &str) -> String {
    let mut out = String::with_capacity(pattern.len());
    let mut chars = pattern.chars().peekable();
    let mut class_depth = 0usize;
    while let Some(c) = chars.next() {
        match c {
            '\\' => {
                let Some(next) = chars.next() else {
                    out.push(c);
                    break;
                };
                if class_depth == 0 && matches!(next, 'b' | 'B' | '<' | '>') {
                    if next == 'b' && chars.peek() == Some(&'{') {
                        chars.by_ref().find(|&x| x == '}');
                    }
                    continue;
                }
                out.push(c);
                out.push(next);
            }
            '[' => {
                out.push(c);
                class_depth += 1;
                // A `]` right after `[` or `[^` is a literal, not the end of the class.
                if let Some(caret) = chars.next_if_eq(&'^') {
                    out.push(caret);
                }
                if let Some(bracket) = chars.next_if_eq(&']') {
                    out.push(bracket);
                }
            }
            ']' if class_depth > 0 => {
                class_depth -= 1;
                out.push(c);
            }
            _ => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests;
