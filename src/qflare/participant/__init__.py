"""An edge device's part in secure-aggregation rounds, without any transport.

One :class:`~qflare.participant.base.Participant` per protocol answers the tasks of its type
(:class:`~qflare.participant.secagg.SecAggParticipant`,
:class:`~qflare.participant.chronos.ChronosParticipant`). ``qflare node``
(:class:`~qflare.node.NodeRunner`) and the in-process simulator
(:class:`~qflare.sim.device.SimDevice`) drive the same participants; they differ only in how
tasks arrive and results leave.
"""
