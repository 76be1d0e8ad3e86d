//! Label selectors, as the API server evaluates them: `matchLabels` and
//! `matchExpressions` (In, NotIn, Exists, DoesNotExist) all ANDed, an empty selector
//! selecting everything; and Service selectors (plain equality, where an empty or
//! missing selector selects nothing, since such Services have hand-made endpoints).

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;

pub fn selects(selector: &LabelSelector, labels: &BTreeMap<String, String>) -> bool {
    for (k, v) in selector.match_labels.iter().flatten() {
        if labels.get(k) != Some(v) {
            return false;
        }
    }
    for e in selector.match_expressions.iter().flatten() {
        let value = labels.get(&e.key);
        let values = e.values.as_deref().unwrap_or_default();
        let ok = match e.operator.as_str() {
            "In" => value.is_some_and(|v| values.contains(v)),
            "NotIn" => value.is_none_or(|v| !values.contains(v)),
            "Exists" => value.is_some(),
            "DoesNotExist" => value.is_none(),
            // An unknown operator is invalid: it selects nothing.
            _ => false,
        };
        if !ok {
            return false;
        }
    }
    true
}

pub fn is_empty(selector: &LabelSelector) -> bool {
    selector.match_labels.as_ref().is_none_or(|m| m.is_empty())
        && selector.match_expressions.as_ref().is_none_or(|m| m.is_empty())
}

pub fn service_selects(
    selector: Option<&BTreeMap<String, String>>,
    labels: &BTreeMap<String, String>,
) -> bool {
    match selector {
        Some(s) if !s.is_empty() => s.iter().all(|(k, v)| labels.get(k) == Some(v)),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelectorRequirement;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn selectors() {
        let app = labels(&[("app", "web"), ("tier", "front")]);
        assert!(selects(&LabelSelector::default(), &app), "empty selects all");
        let mut s = LabelSelector {
            match_labels: Some(labels(&[("app", "web")])),
            ..Default::default()
        };
        assert!(selects(&s, &app));
        s.match_expressions = Some(vec![LabelSelectorRequirement {
            key: "tier".into(),
            operator: "NotIn".into(),
            values: Some(vec!["front".into()]),
        }]);
        assert!(!selects(&s, &app));
        s.match_expressions = Some(vec![LabelSelectorRequirement {
            key: "env".into(),
            operator: "DoesNotExist".into(),
            values: None,
        }]);
        assert!(selects(&s, &app));
        assert!(!service_selects(None, &app));
        assert!(!service_selects(Some(&labels(&[])), &app));
        assert!(service_selects(Some(&labels(&[("app", "web")])), &app));
    }
}
