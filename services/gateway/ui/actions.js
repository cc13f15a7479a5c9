// Cancel and retry, each asked for first (resolve true when the API accepted it); pause and resume, which undo
// each other, are not.
import { api } from "./api.js";
import { confirmAction, notify } from "./components.js";

async function confirmed(execution, what, { title, text, action }) {
  if (!(await confirmAction(title, text, action))) return false;
  try {
    await api(`/execute/${execution.executionId}/${what}`, { method: "POST" });
    notify(`${execution.executionId}: ${what === "cancel" ? "cancelled" : "retried"}`);
    return true;
  } catch (e) {
    notify(e.message, "error");
    return false;
  }
}

export function cancelExecution(execution) {
  return confirmed(execution, "cancel", {
    title: "Cancel this execution?",
    text: `${execution.executionId} (${execution.workflowId}): queued jobs are withdrawn and running handlers are stopped.`,
    action: "Cancel execution",
  });
}

/** `pause` or `resume` one execution; resolves the execution as the API answered, or null. */
export async function holdExecution(execution, what) {
  try {
    const reply = await api(`/execute/${execution.executionId}/${what}`, { method: "POST" });
    notify(`${execution.executionId}: ${what === "pause" ? "paused" : "resumed"}`);
    return reply.execution;
  } catch (e) {
    notify(e.message, "error");
    return null;
  }
}

export function retryExecution(execution) {
  return confirmed(execution, "retry", {
    title: "Retry from the latest checkpoint?",
    text: `${execution.executionId}: every job that did not complete runs again; completed jobs keep their results.`,
    action: "Retry",
  });
}
