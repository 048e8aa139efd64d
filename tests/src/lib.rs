//! shoal-tests: test harnesses
