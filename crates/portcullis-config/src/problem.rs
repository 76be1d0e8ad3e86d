//! Problems: everything wrong with the input, each naming the object, the field and
//! what to do. Compilation never stops at the first Problem; it collects them all so
//! that `portcullis check` can print every one and the gateway can log each once.

use std::fmt;

/// How bad a [`Problem`] is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Severity {
    /// Something is not served as written (an object, a path or a certificate was
    /// rejected). `portcullis check` exits 1.
    Error,
    /// Served, but probably not what the author meant (a missing Service, a host
    /// served without TLS, a certificate about to expire).
    Warning,
}

impl fmt::Display for Severity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Severity::Error => "error",
            Severity::Warning => "warning",
        })
    }
}

/// The Kubernetes object a Problem is about: `Kind namespace/name`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ObjectRef {
    pub kind: String,
    /// `None` for cluster-scoped objects such as IngressClass.
    pub namespace: Option<String>,
    pub name: String,
}

impl ObjectRef {
    pub fn new(kind: &str, namespace: Option<&str>, name: &str) -> Self {
        ObjectRef {
            kind: kind.to_string(),
            namespace: namespace.map(str::to_string),
            name: name.to_string(),
        }
    }
}

impl fmt::Display for ObjectRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.namespace {
            Some(ns) => write!(f, "{} {}/{}", self.kind, ns, self.name),
            None => write!(f, "{} {}", self.kind, self.name),
        }
    }
}

/// Where an object came from: a file (and the document's index in it) or a watch.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Origin {
    /// File path, `-` for stdin, or empty when the object came from the API server.
    pub file: String,
    /// 1-based line where the problem is, when known.
    pub line: Option<u64>,
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.line {
            Some(line) => write!(f, "{}:{}", self.file, line),
            None => f.write_str(&self.file),
        }
    }
}

/// One thing wrong with the input.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Problem {
    pub severity: Severity,
    /// The object at fault, when the problem is about one (not, say, a YAML syntax error).
    pub object: Option<ObjectRef>,
    /// Dotted path of the field at fault, e.g. `spec.rules[0].http.paths[1].path`, or
    /// `metadata.annotations["portcullis.dev/max-body-size"]`. Empty for the whole object.
    pub field: String,
    pub message: String,
    pub origin: Option<Origin>,
}

impl Problem {
    pub fn error(object: Option<ObjectRef>, field: impl Into<String>, message: impl Into<String>) -> Self {
        Problem {
            severity: Severity::Error,
            object,
            field: field.into(),
            message: message.into(),
            origin: None,
        }
    }

    pub fn warning(object: Option<ObjectRef>, field: impl Into<String>, message: impl Into<String>) -> Self {
        Problem {
            severity: Severity::Warning,
            ..Problem::error(object, field, message)
        }
    }

    pub fn at(mut self, origin: Option<Origin>) -> Self {
        if self.origin.is_none() {
            self.origin = origin;
        }
        self
    }

    pub fn is_error(&self) -> bool {
        self.severity == Severity::Error
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: ", self.severity)?;
        if let Some(object) = &self.object {
            write!(f, "{object}")?;
            if !self.field.is_empty() {
                write!(f, " {}", self.field)?;
            }
            f.write_str(": ")?;
        } else if !self.field.is_empty() {
            write!(f, "{}: ", self.field)?;
        }
        f.write_str(&self.message)?;
        if let Some(origin) = &self.origin {
            if !origin.file.is_empty() {
                write!(f, " ({origin})")?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_names_object_field_and_file() {
        let p = Problem::error(
            Some(ObjectRef::new("Ingress", Some("shop"), "web")),
            "spec.rules[0].host",
            "\"-bad\" is not a valid DNS name",
        )
        .at(Some(Origin {
            file: "m/ingress.yaml".into(),
            line: Some(3),
        }));
        assert_eq!(
            p.to_string(),
            "error: Ingress shop/web spec.rules[0].host: \"-bad\" is not a valid DNS name (m/ingress.yaml:3)"
        );
    }
}
