//! ingress-nginx's `rewrite-target`: the upstream path is the target with `$1`..`$9`
//! replaced by the groups the route's path regex captured. ingress-nginx pastes the
//! target into an nginx `rewrite` directive, so any nginx variable or directive text
//! in it became configuration; here the target is parsed into literal text and group
//! references, and anything else is refused.

use std::fmt;

/// A parsed `rewrite-target`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RewriteTarget {
    text: String,
    pieces: Vec<Piece>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Piece {
    Literal(String),
    /// `$N`: the Nth group of the path regex; `$0` is the whole match.
    Group(usize),
}

impl RewriteTarget {
    /// Parses a target such as `/$2` or `/api/$1?version=2`.
    pub fn parse(text: &str) -> Result<RewriteTarget, String> {
        if !text.starts_with('/') {
            return Err(format!(
                "{text:?} must be a path starting with / (redirects to other hosts are permanent-redirect or temporal-redirect)"
            ));
        }
        let mut pieces = Vec::new();
        let mut literal = String::new();
        let mut chars = text.chars().peekable();
        while let Some(c) = chars.next() {
            match c {
                '$' => match chars.peek().and_then(|d| d.to_digit(10)) {
                    Some(d) => {
                        chars.next();
                        if !literal.is_empty() {
                            pieces.push(Piece::Literal(std::mem::take(&mut literal)));
                        }
                        pieces.push(Piece::Group(d as usize));
                    }
                    None => {
                        return Err(format!(
                            "{text:?}: only $1 to $9 (groups of the path regex) can be used; nginx variables are not expanded"
                        ))
                    }
                },
                c if c.is_ascii_graphic() && !matches!(c, '#' | '"' | '\\' | '{' | '}' | ';' | '<' | '>' | '`' | '^' | '|') => {
                    literal.push(c)
                }
                c => return Err(format!("{text:?} contains {c:?}, which is not valid in a URL path")),
            }
        }
        if !literal.is_empty() {
            pieces.push(Piece::Literal(literal));
        }
        Ok(RewriteTarget {
            text: text.to_string(),
            pieces,
        })
    }

    /// The highest group number the target refers to.
    pub fn max_group(&self) -> usize {
        self.pieces
            .iter()
            .filter_map(|p| match p {
                Piece::Group(n) => Some(*n),
                Piece::Literal(_) => None,
            })
            .max()
            .unwrap_or(0)
    }

    /// The new path and query for a request whose path matched with `captures` (group
    /// 0 first). As nginx's `rewrite`: the whole URI is replaced; the request's query
    /// string is appended (after `&` when the target has one) unless the target ends
    /// with `?`.
    pub fn apply(&self, captures: &[Option<&str>], query: Option<&str>) -> String {
        let mut out = String::with_capacity(self.text.len() + 32);
        for piece in &self.pieces {
            match piece {
                Piece::Literal(s) => out.push_str(s),
                Piece::Group(n) => out.push_str(captures.get(*n).copied().flatten().unwrap_or("")),
            }
        }
        if let Some(stripped) = out.strip_suffix('?') {
            out.truncate(stripped.len());
            return out;
        }
        match query.filter(|q| !q.is_empty()) {
            Some(q) if out.contains('?') => {
                out.push('&');
                out.push_str(q);
            }
            Some(q) => {
                out.push('?');
                out.push_str(q);
            }
            None => {}
        }
        out
    }
}

impl fmt::Display for RewriteTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

/// Compiles an Ingress path written as a regular expression the way ingress-nginx
/// reads it with `use-regex` or `rewrite-target`: case-insensitive, anchored at the
/// start only (`location ~* "^PATH"`). The size limit bounds the memory a hostile
/// pattern can take; matching is linear in the path whatever the pattern.
pub fn path_regex(path: &str) -> Result<regex::Regex, String> {
    if !path.starts_with('/') {
        return Err(format!("{path:?} must start with /"));
    }
    if path.chars().any(char::is_control) {
        return Err(format!("{path:?} contains a control character"));
    }
    regex::RegexBuilder::new(&format!("(?i)^{path}"))
        .size_limit(1 << 20)
        .dfa_size_limit(1 << 20)
        .nest_limit(50)
        .build()
        .map_err(|e| {
            format!(
                "{path:?} is not a valid regular expression: {}",
                first_line(&e.to_string())
            )
        })
}

fn first_line(s: &str) -> String {
    s.lines().last().unwrap_or(s).trim().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rewrite(path: &str, target: &str, request: &str, query: Option<&str>) -> Option<String> {
        let re = path_regex(path).unwrap();
        let t = RewriteTarget::parse(target).unwrap();
        let caps = re.captures(request)?;
        let groups: Vec<Option<&str>> = caps.iter().map(|m| m.map(|m| m.as_str())).collect();
        Some(t.apply(&groups, query))
    }

    #[test]
    fn the_ingress_nginx_documentation_example() {
        // path /something(/|$)(.*), rewrite-target /$2
        let p = "/something(/|$)(.*)";
        assert_eq!(rewrite(p, "/$2", "/something", None).as_deref(), Some("/"));
        assert_eq!(rewrite(p, "/$2", "/something/", None).as_deref(), Some("/"));
        assert_eq!(rewrite(p, "/$2", "/something/new", None).as_deref(), Some("/new"));
        assert_eq!(rewrite(p, "/$2", "/SomeThing/new", None).as_deref(), Some("/new"));
        assert_eq!(rewrite(p, "/$2", "/somethingelse", None), None);
    }

    #[test]
    fn without_groups_the_whole_uri_is_replaced() {
        assert_eq!(rewrite("/foo", "/", "/foo/bar", None).as_deref(), Some("/"));
    }

    #[test]
    fn queries_follow_nginx_rewrite() {
        let p = "/a(.*)";
        assert_eq!(
            rewrite(p, "/b$1", "/a/x", Some("q=1")).as_deref(),
            Some("/b/x?q=1")
        );
        assert_eq!(
            rewrite(p, "/b$1?v=2", "/a/x", Some("q=1")).as_deref(),
            Some("/b/x?v=2&q=1")
        );
        assert_eq!(rewrite(p, "/b$1?", "/a/x", Some("q=1")).as_deref(), Some("/b/x"));
        assert_eq!(rewrite(p, "/b$1", "/a/x", None).as_deref(), Some("/b/x"));
    }

    #[test]
    fn missing_groups_expand_to_nothing() {
        assert_eq!(rewrite("/a", "/$3/x", "/a", None).as_deref(), Some("//x"));
    }

    #[test]
    fn nginx_variables_and_directive_text_are_refused() {
        for bad in [
            "/$host",
            "/${1}",
            "/x; return 200",
            "http://evil/",
            "/a b",
            "/a\nb",
            "$1",
            "/a\"b",
            "/$",
        ] {
            assert!(RewriteTarget::parse(bad).is_err(), "{bad:?}");
        }
        assert_eq!(RewriteTarget::parse("/api/$1/$2").unwrap().max_group(), 2);
    }

    #[test]
    fn path_regexes_are_anchored_at_the_start_only_and_case_insensitive() {
        let re = path_regex("/api/v[0-9]+").unwrap();
        assert!(re.is_match("/API/v2/users"));
        assert!(!re.is_match("/x/api/v2"));
        assert!(path_regex("/(unclosed").is_err());
        assert!(path_regex("no-slash").is_err());
        assert!(path_regex("/a{1000}{1000}").is_err(), "over the size limit");
    }
}
