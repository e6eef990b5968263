//! tidepool-smol
