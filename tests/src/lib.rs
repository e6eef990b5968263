//! tidepool-tests
