//! Search indexes for Tidepool (pure, no I/O).
