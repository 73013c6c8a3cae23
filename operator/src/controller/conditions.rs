//! Pure helpers for status conditions.

use chrono::{DateTime, Utc};

use crate::api::common::Condition;

/// Sets a condition, keeping its transition time when its status does not change.
pub fn set_condition(
    conditions: &mut Vec<Condition>,
    type_: &str,
    status: bool,
    reason: &str,
    message: &str,
    now: DateTime<Utc>,
) {
    let status = if status { "True" } else { "False" };
    match conditions.iter_mut().find(|c| c.type_ == type_) {
        Some(existing) => {
            if existing.status != status {
                existing.last_transition_time = now;
            }
            existing.status = status.to_string();
            existing.reason = reason.to_string();
            existing.message = message.to_string();
        }
        None => conditions.push(Condition {
            type_: type_.to_string(),
            status: status.to_string(),
            reason: reason.to_string(),
            message: message.to_string(),
            last_transition_time: now,
            observed_generation: None,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    #[test]
    fn transition_time_moves_only_when_status_changes() {
        let t0 = Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap();
        let t1 = Utc.with_ymd_and_hms(2026, 1, 1, 0, 1, 0).unwrap();
        let t2 = Utc.with_ymd_and_hms(2026, 1, 1, 0, 2, 0).unwrap();
        let mut c = Vec::new();
        set_condition(&mut c, "Stalled", true, "TargetNotFound", "a", t0);
        set_condition(&mut c, "Stalled", true, "TargetNotFound", "b", t1);
        assert_eq!(c[0].last_transition_time, t0);
        assert_eq!(c[0].message, "b");
        set_condition(&mut c, "Stalled", false, "Reconciled", "", t2);
        assert_eq!(c[0].last_transition_time, t2);
        assert_eq!(c.len(), 1);
    }
}
