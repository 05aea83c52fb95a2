/* engine/scheduler.h: fires schedules' ticks (engine/schedule.h) from one loop of a process.
 *
 * The scheduler sleeps on a timer set to the earliest tick of any schedule that will fire
 * (flowd_schedule_next_due_ms) and on NOTIFY flowd_schedules (a schedule put, deleted, paused or
 * resumed, the test clock moved); an idle schedule table costs nothing between ticks. When a tick
 * is due, or within the lead before it at which a schedule that allows overlap makes its run ahead
 * as a delayed start (flowd_schedule_lead), a pass reads the due schedules (flowd_schedules_due),
 * plans each in C (its ticks by the
 * catch-up policy, its next tick, each run's rendered and checked input) and hands the plan to
 * flowd_schedules_fire, which creates the runs and moves the schedules on in one transaction,
 * only where the next tick is still what the pass read. Every process may run one: exactly one
 * of them makes each tick's run, and a process killed at any point leaves the tick for another.
 *
 * It has its own connection, so that a pass never waits behind its loop's other statements. */
#pragma once

struct ev_loop;
typedef struct eng_scheduler eng_scheduler;

/* Starts on loop (call from the loop's thread). Its connection is "flowd-schedules-<pid>" in
 * pg_stat_activity. Never NULL. */
eng_scheduler *eng_scheduler_start(struct ev_loop *loop, const char *conninfo);
/* Stops timers and closes the connection (a pass in flight commits or not on its own: either
 * way no tick is lost or made twice). On the loop's thread; NULL-safe. */
void eng_scheduler_stop(eng_scheduler *s);
