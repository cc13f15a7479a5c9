// Cancel and retry, each asked for first. Resolve true when the API accepted it.
import { api } from "./api.js";
import { confirmAction, notify } from "./components.js";

export async function cancelExecution(execution) {
  const ok = await confirmAction(
    "Cancel this execution?",
    `${execution.executionId} (${execution.workflowId}): queued jobs are withdrawn and running handlers are stopped.`,
    "Cancel execution",
  );
  if (!ok) return false;
  try {
    await api(`/execute/${execution.executionId}/cancel`, { method: "POST" });
    notify(`${execution.executionId} cancelled`);
    return true;
  } catch (e) {
    notify(e.message, "error");
    return false;
  }
}

export async function retryExecution(execution) {
  const ok = await confirmAction(
    "Retry from the latest checkpoint?",
    `${execution.executionId}: every job that did not complete runs again; completed jobs keep their results.`,
    "Retry",
  );
  if (!ok) return false;
  try {
    await api(`/execute/${execution.executionId}/retry`, { method: "POST" });
    notify(`${execution.executionId} retried`);
    return true;
  } catch (e) {
    notify(e.message, "error");
    return false;
  }
}
