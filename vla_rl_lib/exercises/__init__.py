"""Course exercises: ``check_<name>(student_fn)`` compares a student's function with the library's
reference on random and edge-case inputs and says exactly what was wrong; ``grading`` releases
student versions of the assignment notebooks and grades a folder of submissions."""
from vla_rl_lib.exercises.core import RESULTS, CheckResult, patched
from vla_rl_lib.exercises.offline import (check_advantage_weights, check_cql_penalty, check_expectile_loss,
                                          check_returns_to_go, check_td3_bc_actor_loss)
from vla_rl_lib.exercises.online import (check_clipped_surrogate, check_compute_gae, check_group_relative_advantages,
                                         check_k3_kl, check_sac_temperature_loss)
from vla_rl_lib.exercises.vla import check_detokenize_actions, check_tokenize_actions

__all__ = ["RESULTS", "CheckResult", "patched", "check_expectile_loss", "check_advantage_weights", "check_cql_penalty",
           "check_td3_bc_actor_loss", "check_returns_to_go", "check_compute_gae", "check_clipped_surrogate",
           "check_sac_temperature_loss", "check_group_relative_advantages", "check_k3_kl", "check_tokenize_actions",
           "check_detokenize_actions"]
