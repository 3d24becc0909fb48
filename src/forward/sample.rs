//! Request samples (`server.sample_log`), once for both carriers: each carrier calls
//! [`record`] right after its routing decision, while the request head is still there.
//! A sampled request is written as one [`Sample`] line through the same queue and
//! writer thread as the access log; the file is what `cohort simulate --samples` reads.

use crate::access_log::AccessLog;
use crate::routing::{Decision, RequestView, RoutingTable};
use crate::sample::{Fields, Sample};

/// Writes a sample of the request to `log` with probability `server.sample_log_rate`
/// (read from `table`, so a reload changes it). `route` is the matched service and its
/// decision (`None`: no service matched, the 404 case).
pub fn record(
    log: Option<&AccessLog>,
    table: &RoutingTable,
    view: &RequestView<'_>,
    route: Option<(usize, &Decision)>,
) {
    let Some(log) = log else {
        return;
    };
    let rate = table.config.server.sample_log_rate;
    if rate < 1.0 && rand::random::<f64>() >= rate {
        return;
    }
    // Computed per sample rather than kept in the table: only sampled requests pay.
    let fields = Fields::of(&table.config);
    let decided = route.and_then(|(svc, d)| Some((table.router.services.get(svc)?, d)));
    let sample = Sample::capture(&fields, view, table.router.client_ip(view), decided);
    log.write(sample.line());
}
