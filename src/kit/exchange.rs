//! The one place a module's call leaves the process, for tests and transcripts: with no
//! [`Exchange`](crate::runtime::context::Exchange) on the run, the call is made; in a test, a
//! fake or a transcript answers it instead; a recording run makes it and keeps it (redacted).

use std::future::Future;

use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::runtime::context::RunCtx;

/// Makes `call` on `target` with `args` (what a fake matches and a transcript keeps) through
/// `real`, unless the run's exchange answers it. An answer that does not fit `T` is an error
/// naming the call.
pub async fn call<T, F>(ctx: &RunCtx, call: &str, target: &str, args: Value, real: F) -> Result<T, String>
where
    T: Serialize + DeserializeOwned,
    F: Future<Output = Result<T, String>>,
{
    let Some(x) = &ctx.exchange else { return real.await };
    let args = ctx.redactor.apply_json(args);
    if let Some(answer) = x.answer(call, target, &args) {
        return answer
            .and_then(|v| serde_json::from_value(v.clone()).map_err(|e| format!("{call} on {target}: the answer {v} does not fit: {e}")));
    }
    let made = real.await;
    let kept = match &made {
        Ok(v) => Ok(ctx.redactor.apply_json(serde_json::to_value(v).unwrap_or(Value::Null))),
        Err(e) => Err(ctx.redactor.apply(e).into_owned()),
    };
    x.made(call, target, &args, &kept);
    made
}
