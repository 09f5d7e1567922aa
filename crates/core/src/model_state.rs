//! A model version's state, as the repository index and the cluster status name it.

use std::str::FromStr;

/// Triton's `ModelReadyState` (core src/model_lifecycle.h): the `state` of a repository index
/// entry, of a node's status row and of the `tern_model_state` metric.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ModelState {
    Unknown,
    Ready,
    Unavailable,
    Loading,
    Unloading,
}

impl ModelState {
    pub const ALL: [ModelState; 5] = [
        ModelState::Unknown,
        ModelState::Ready,
        ModelState::Unavailable,
        ModelState::Loading,
        ModelState::Unloading,
    ];

    /// Triton's exact string (`ModelReadyStateString`), as clients read it in the index.
    pub const fn as_str(self) -> &'static str {
        match self {
            ModelState::Unknown => "UNKNOWN",
            ModelState::Ready => "READY",
            ModelState::Unavailable => "UNAVAILABLE",
            ModelState::Loading => "LOADING",
            ModelState::Unloading => "UNLOADING",
        }
    }

    /// The state a string names, exactly as [`ModelState::as_str`] spells it; `None` for
    /// anything else (an index entry without a version has the empty state).
    pub fn parse(s: &str) -> Option<ModelState> {
        ModelState::ALL.into_iter().find(|state| state.as_str() == s)
    }
}

impl std::fmt::Display for ModelState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A string that names no [`ModelState`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("'{0}' is not a model state (UNKNOWN, READY, UNAVAILABLE, LOADING or UNLOADING)")]
pub struct UnknownModelState(pub String);

impl FromStr for ModelState {
    type Err = UnknownModelState;

    fn from_str(s: &str) -> Result<ModelState, UnknownModelState> {
        ModelState::parse(s).ok_or_else(|| UnknownModelState(s.to_owned()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_state_parses_back_from_its_string() {
        for state in ModelState::ALL {
            assert_eq!(state.as_str().parse::<ModelState>(), Ok(state));
        }
        assert_eq!(ModelState::parse(""), None);
        assert_eq!(ModelState::parse("ready"), None, "Triton's strings are upper case");
    }
}
